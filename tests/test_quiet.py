"""What a user did not ask to see: `spectra-hf` commands run as a user runs them (fresh processes, default verbosity)
print nothing on stderr outside the short allow-list below, and publish nothing that names the publishing machine's
paths. `-v` brings third-party logging back."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, snapshot_download

BIN = Path(sys.executable).parent
ORG = "quietcheck"
SECRET = "SECRET-workdir-xyz"

# stderr lines a command may print, each with why the user wants it.
ALLOWED_STDERR = {
    r"^\s*$": "blank lines around progress bars",
    r"^\s*(\x1b\[A)+\s*$": "nested progress bars clearing their lines when done (spaces, cursor up)",
    r"\d+%\|.*\|": "progress bars of what the user asked for (training steps, map/tokenize passes, downloads)",
    r"^Generating \w+ split: \d+ examples \[": "datasets reading the user's text files (a progress count, no total)",
    r"^\{'(train_runtime|loss|eval_loss)'": "the Trainer's own step/summary metrics of the run the user started",
    r"calibration text has \d+ tokens: using \d+ samples": "the documented warning: less calibration than asked for",
}


def unexpected_stderr(stderr: str) -> list[str]:
    """The stderr lines that match no ALLOWED_STDERR pattern (progress-bar redraws split on carriage returns)."""
    lines = [part for line in stderr.splitlines() for part in line.split("\r")]
    return [line for line in lines if not any(re.search(pattern, line) for pattern in ALLOWED_STDERR)]


def run_cli(args: list[str], *, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(BIN / "spectra-hf"), *args], cwd=cwd, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def commands(tmp_path_factory, tokenizer_dir, corpus_files, local_hub) -> dict[str, subprocess.CompletedProcess]:
    """train (TriLM and FloatLM), quantize and publish, each a fresh `spectra-hf` process, run from a work dir with a
    distinctive path and given absolute paths (as a shell's completion writes them)."""
    root = tmp_path_factory.mktemp("quiet")
    work = root / SECRET
    work.mkdir()
    shutil.copytree(tokenizer_dir, work / "tok")
    shutil.copy(corpus_files[0], work / "train.txt")
    tiny = ["--tiny", "true", "--block_size", "32", "--global_batch_size", "2", "--per_device_train_batch_size", "2"]
    runs = {}
    for name in ("TriLM_99M", "FloatLM_99M"):
        runs[f"train {name}"] = run_cli([
            "train", name, *tiny, "--max_steps", "2", "--tokenizer", str(work / "tok"),
            "--data_files", str(work / "train.txt"), "--suite_dir", str(work / "suite"),
            "--output_dir", str(work / "runs" / name),
        ], cwd=work)  # fmt: skip
    runs["quantize"] = run_cli([
        "quantize", str(work / "suite" / "FloatLM_99M"), str(work / "suite"), "--bits", "4",
        "--calibration", str(work / "train.txt"), "--calibration-samples", "4", "--calibration-length", "32",
    ], cwd=work)  # fmt: skip
    runs["publish"] = run_cli(
        ["publish", str(work / "suite"), "--org", ORG, "--endpoint", local_hub.url, "--allow-partial"], cwd=work
    )
    runs["root"] = root  # type: ignore[assignment]
    return runs


@pytest.mark.slow  # four fresh processes importing torch; tiny training, GPTQ and publishing
@pytest.mark.timeout(3600)  # the module fixture's four processes count here (~9 min at load 15)
def test_train_quantize_publish_print_nothing_unasked_on_stderr(commands):
    unexpected = {name: unexpected_stderr(done.stderr) for name, done in commands.items() if name != "root"}
    assert not any(unexpected.values()), f"stderr lines outside ALLOWED_STDERR: {unexpected}"


@pytest.mark.slow  # the demo runs once per session (tests/conftest.py); its stderr is checked here
@pytest.mark.timeout(3600)  # the fixture's demo run counts here: over 900 s on a loaded 2-core machine
def test_demo_prints_nothing_unasked_on_stderr(demo_quick):
    assert not unexpected_stderr(demo_quick.stderr), unexpected_stderr(demo_quick.stderr)


@pytest.mark.slow  # two fresh processes importing gptqmodel
def test_verbose_shows_third_party_logging(tmp_path):
    """-v is the switch: gptqmodel's banner, silent by default, shows with it (so the default's silence is the
    setting's doing, not a library that went quiet on its own)."""
    from spectra_hf.cli import build_parser

    assert build_parser().parse_args(["-v", "suite"]).verbose and not build_parser().parse_args(["suite"]).verbose
    for verbose in (False, True):
        script = f"from spectra_hf import verbosity\nwith verbosity.configure(verbose={verbose}):\n    import gptqmodel"
        done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert ("GPT-QModel" in done.stdout + done.stderr) == verbose, (verbose, done.stdout, done.stderr)


@pytest.mark.slow  # shares the module's commands; downloads every published branch
def test_no_path_of_the_publishing_machine_in_any_published_file(commands, local_hub):
    """No absolute path of the publishing machine goes into any published file: cards, configs, tokenizer files,
    revisions.json (spectra_export.json stays local, but records base names too)."""
    root: Path = commands["root"]  # type: ignore[assignment]
    api = HfApi(endpoint=local_hub.url, token=False)
    repos = [model.id for model in api.list_models(author=ORG)]
    assert {f"{ORG}/TriLM_99M", f"{ORG}/FloatLM_99M", f"{ORG}/QuantLM_99M_4bit"} <= set(repos)
    downloads = root / "downloads"
    checked: dict[str, bytes] = {}
    for repo in repos:
        for branch in api.list_repo_refs(repo).branches:
            local = downloads / repo / branch.name
            snapshot_download(repo, revision=branch.name, local_dir=local, endpoint=local_hub.url, token=False)
            for path in local.rglob("*"):
                if path.is_file() and ".cache" not in path.relative_to(local).parts:
                    checked[f"{repo}@{branch.name}:{path.relative_to(local)}"] = path.read_bytes()
    assert any(name.endswith("README.md") for name in checked) and any(name.endswith("config.json") for name in checked)
    needles = {SECRET.encode(), str(root).encode(), str(root.resolve()).encode()}
    leaks = [name for name, data in checked.items() if any(needle in data for needle in needles)]
    assert not leaks, f"published files naming the publishing machine's paths: {leaks}"
    # What the paths were replaced by: the calibration text is named by its file name.
    card = checked[f"{ORG}/QuantLM_99M_4bit@main:README.md"].decode()
    assert "tokens of files:train.txt" in card
    assert "The recipe below" not in card  # a scaled-down model has no recipe table to point at


# A caller (a notebook) that runs commands in-process: its logging and warnings settings before, during (sampled by
# a thread while `hub serve` runs; Ctrl-C ends it) and after each command, as JSON; its own warnings and log lines
# after the commands go to stderr, where the test looks for them.
IN_PROCESS_CALLER = r"""
import json, logging, os, signal, socket, subprocess, sys, threading, time, urllib.error, urllib.request, warnings
from pathlib import Path

from spectra_hf import verbosity
from spectra_hf.cli import main

work = Path(sys.argv[1])
os.environ.pop("TRANSFORMERS_VERBOSITY", None)
logging.getLogger("transformers").setLevel(logging.INFO)  # the caller asked for transformers' info lines
warnings.simplefilter("always", UserWarning)  # and for every UserWarning


def state():
    return {
        "TRANSFORMERS_VERBOSITY": os.environ.get("TRANSFORMERS_VERBOSITY"),
        "levels": {name: logging.getLogger(name).level for name in verbosity.QUIET_LOGGERS},
        "root_handlers": [repr(handler) for handler in logging.getLogger().handlers],
        "root_level": logging.getLogger().level,
        "filters": [repr(entry) for entry in warnings.filters],
        "showwarning": repr(warnings.showwarning),
    }


def third_party_output(when):
    logging.getLogger("transformers.modeling_utils").warning(f"transformers warning {when}")
    warnings.warn_explicit(f"third-party advice {when}", FutureWarning, "x.py", 1, module="transformers.x", registry={})
    warnings.warn_explicit(f"spectra_hf warning {when}", UserWarning, "y.py", 1, module="spectra_hf.y", registry={})


def sample_then_interrupt(port, during):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the server answers: the command is running
        try:
            opener.open(f"http://127.0.0.1:{port}/api/models", timeout=10)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.05)
    during.update(state())
    child = [sys.executable, "-c", "import os; print(os.environ.get('TRANSFORMERS_VERBOSITY'))"]
    during["child"] = subprocess.run(child, capture_output=True, text=True).stdout.strip()
    third_party_output("during")
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: `hub serve` stops and returns


report = {"before": state()}
report["suite"] = main(["suite", "--json"])
report["after suite"] = state()
report["demo"] = main(["demo", "--workdir", str(work / "empty"), "--stages", "publish"])  # a user error
report["after demo"] = state()
report["logbar"] = logging.getLogger("logbar").level
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
during = {}
watcher = threading.Thread(target=sample_then_interrupt, args=(port, during))
watcher.start()
report["serve"] = main(["hub", "serve", "--root", str(work / "hub"), "--port", str(port), "--quiet"])
watcher.join()
report["during serve"] = during
report["after serve"] = state()
third_party_output("after")
print("REPORT " + json.dumps(report))
"""


def test_in_process_commands_leave_the_callers_logging_and_warnings_as_they_were(tmp_path):
    """Called in-process (a notebook), a quiet command quiets only itself (and the processes it starts): after a
    normal return, a user error or Ctrl-C, the environment, logger levels, root handlers and warnings filters are
    the caller's again, and the caller's third-party warnings and log lines show again."""
    done = subprocess.run(
        [sys.executable, "-c", IN_PROCESS_CALLER, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, (done.stdout[-3000:], done.stderr[-3000:])
    report = json.loads(lines[-1].removeprefix("REPORT "))
    assert (report["suite"], report["demo"], report["serve"]) == (0, 2, 0), report
    assert "demo_config.json is missing" in done.stderr  # the user error was the command's, and said so
    before = report["before"]
    assert before["TRANSFORMERS_VERBOSITY"] is None and before["levels"]["transformers"] == logging.INFO
    assert before["root_handlers"] == []  # a fresh interpreter: the quiet command adds one for its duration
    for after in ("after suite", "after demo", "after serve"):
        assert report[after] == before, (after, report[after], before)
    assert report["logbar"] == logging.INFO  # gptqmodel's logger at its own default again, not the command's ERROR
    # During the command: quiet, and a process it starts inherits the setting.
    during = report["during serve"]
    assert during["TRANSFORMERS_VERBOSITY"] == "error" and during["child"] == "error", during
    assert set(during["levels"].values()) == {logging.ERROR}, during["levels"]
    assert len(during["root_handlers"]) == 1 and during["filters"] != before["filters"], during
    assert "transformers warning during" not in done.stderr and "third-party advice during" not in done.stderr
    assert "spectra_hf warning during" in done.stderr  # spectra_hf's own warnings stay
    for line in ("transformers warning after", "third-party advice after", "spectra_hf warning after"):
        assert line in done.stderr, (line, done.stderr[-3000:])


@pytest.mark.parametrize("callers_setting", [None, "info"])
def test_in_process_command_restores_only_the_environment_it_set(monkeypatch, capsys, callers_setting):
    """TRANSFORMERS_VERBOSITY: set for a quiet command only where the caller left it unset, and removed after; a
    caller's own value stays, during and after."""
    from spectra_hf.cli import main

    if callers_setting is None:
        monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    else:
        monkeypatch.setenv("TRANSFORMERS_VERBOSITY", callers_setting)
    assert main(["suite", "--json"]) == 0
    assert main(["info", "no_such_directory"]) == 2  # a user error
    assert os.environ.get("TRANSFORMERS_VERBOSITY") == callers_setting
    assert json.loads(capsys.readouterr().out)  # the command ran and printed its table


def test_quiet_http_logs_raises_levels_and_puts_them_back():
    """The demo's HTTP-client quieting (verbosity.quiet_http_logs): WARNING at least while it lasts (a stricter
    level stays), the caller's levels after."""
    from spectra_hf.verbosity import HTTP_LOGGERS, quiet_http_logs

    loggers = [logging.getLogger(name) for name in HTTP_LOGGERS]
    saved = [logger.level for logger in loggers]
    try:
        loggers[0].setLevel(logging.DEBUG)
        loggers[1].setLevel(logging.CRITICAL)
        with quiet_http_logs():
            assert [logger.level for logger in loggers] == [logging.WARNING, logging.CRITICAL]
        assert [logger.level for logger in loggers] == [logging.DEBUG, logging.CRITICAL]
    finally:
        for logger, level in zip(loggers, saved, strict=True):
            logger.setLevel(level)
