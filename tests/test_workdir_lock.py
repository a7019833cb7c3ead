"""One process per work dir: a second `demo`, `train` or `release publish` is refused in one line naming the first
one's pid; a lock left by a killed process is taken over with a warning."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import yaml

from spectra_hf.cli import main
from spectra_hf.errors import OutputExistsError
from spectra_hf.workdir_lock import LOCK_FILE, read_lock_holder, workdir_lock

HOLDER = """
import sys, time
from spectra_hf.workdir_lock import workdir_lock
with workdir_lock(sys.argv[1], command="holder under test"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held(tmp_path):
    """A live process holding tmp_path/work's lock; yields (directory, process)."""
    directory = tmp_path / "work"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        yield directory, process
    finally:
        process.kill()
        process.wait()


def test_a_second_process_is_refused_naming_the_first(held) -> None:
    directory, process = held
    holder = read_lock_holder(directory)
    assert holder is not None and (holder.pid, holder.command) == (process.pid, "holder under test")
    refused = rf"in use by pid {process.pid} on .*\(holder under test\)"
    with pytest.raises(OutputExistsError, match=refused), workdir_lock(directory, command="second"):
        pass
    assert read_lock_holder(directory) == holder  # the refused process changed nothing


def test_a_killed_holders_lock_is_taken_over_with_a_warning(held, caplog) -> None:
    directory, process = held
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (directory / LOCK_FILE).is_file()  # kill -9: the holder could not remove it
    with (
        caplog.at_level(logging.WARNING, logger="spectra_hf.workdir_lock"),
        workdir_lock(directory, command="successor") as me,
    ):
        assert read_lock_holder(directory) == me and me.pid == os.getpid()
    assert f"locked by pid {process.pid}" in caplog.text and "taking it over" in caplog.text
    assert not (directory / LOCK_FILE).exists()  # released: the file goes with the lock


def _one_line_naming(capsys, pid: int) -> None:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"in use by pid {pid}" in error, error


@pytest.mark.slow  # imports the training and release stacks (~40 s on a loaded 2-core machine)
def test_demo_train_and_release_publish_refuse_a_held_work_dir(held, tmp_path, capsys) -> None:
    directory, process = held
    assert main(["demo", "--workdir", str(directory), "--quick"]) == 2
    _one_line_naming(capsys, process.pid)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": "TriLM_99M", "tiny": True, "output_dir": str(directory)}))
    assert main(["train", str(recipe), "--use_cpu", "true"]) == 2
    _one_line_naming(capsys, process.pid)
    argv = ["release", "publish", "--to", "org", "--work-dir", str(directory), "--endpoint", "http://127.0.0.1:9"]
    assert main(argv) == 2
    _one_line_naming(capsys, process.pid)
    assert sorted(p.name for p in directory.iterdir()) == [LOCK_FILE]  # none of them wrote anything
    assert json.loads((directory / LOCK_FILE).read_text())["pid"] == process.pid
