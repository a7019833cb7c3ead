"""The README's commands, run as written: every ```bash command of README.md is either run here (in a scratch
directory holding the local files it names: a tokenizer, train.txt / eval.txt, a tiny release checkpoint) or
skipped with the reason named in SKIPPED. A new README command that is neither fails `test_every_command_is_covered`.

Scaled down only through what the README documents: `--tiny true` models, and local text small enough that the
calibration uses fewer samples (the documented warning). Hub names are served by the local Hub the README starts.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent

# Command prefix -> why it is not run here.
SKIPPED = {
    "python -m venv": "creates the environment the tests run in (.ci/run does this)",
    "pip install": "installs the environment the tests run in (.ci/run does this)",
    "pip uninstall": "edits the environment the tests run in (.ci/run does this)",
    "python -m pytest": "the test suite itself",
    "spectra-hf demo": "the whole demo pipeline: tests/test_demo.py runs it",
    "torchrun": "two processes on the user's own recipe: tests/test_distributed.py runs torchrun",
    "spectra-hf eval SpectraSuite/FloatLM_99M --tasks spectra": "the 13 tasks need their Hub datasets (offline)",
    "spectra-hf release": "reads the SpectraSuite org on huggingface.co (offline here)",
    "spectra-hf dynamics": "tests/test_dynamics.py runs it on a packed TriLM export with --text",
    "spectra-hf plot suite": "tests/test_plots.py runs it on results.json files and model cards",
}
# Commands run by the tests below, in README order within each test.
CONVERT = ("spectra-hf convert TriLM_3.9B_Unpacked/", "spectra-hf convert TriLM_3.9B/", "spectra-hf info TriLM_3.9B/")
PIPELINE = ("spectra-hf train", "spectra-hf quantize", "spectra-hf publish", "spectra-hf hub serve", "spectra-hf eval")


def readme_commands() -> list[str]:
    """Every command of every ```bash block: continuation lines joined, trailing comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                commands.append(" ".join(command.split()))
    return commands


def _runnable(command: str) -> bool:
    return "[" not in command  # `[--format unpacked]` shows optional flags: the plain command runs in the pipeline


def _covered_by(command: str) -> str | None:
    for prefix, reason in SKIPPED.items():
        if command.startswith(prefix):
            return f"skipped: {reason}"
    if not _runnable(command):
        return "skipped: shows optional flags in [ ]; the command without them is run"
    if command.startswith(CONVERT) or command.startswith(PIPELINE):
        return "run"
    return None


def test_every_command_is_covered():
    uncovered = [c for c in readme_commands() if _covered_by(c) is None]
    assert not uncovered, (
        f"README commands neither run nor skipped with a reason (add them to tests/test_readme.py): {uncovered}"
    )


def _run(
    command: str, cwd: Path, *, env: dict[str, str] | None = None, timeout: int = 1800
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _commands(prefixes: tuple[str, ...]) -> list[str]:
    return [
        c
        for c in readme_commands()
        if c.startswith(prefixes) and _runnable(c) and not _covered_by(c).startswith("skipped")
    ]


@pytest.mark.slow  # four CLI processes, each importing torch (~1-5 min under load)
def test_convert_and_info_commands_run_as_written(tmp_path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    from trilm_release import release_model

    # A release-format TriLM with the 3.9B's 6 scale shards, one layer, widths whose shards are whole 256-weight TQ
    # blocks (so TQ1_0 applies, as it does at full size).
    release = release_model(6, hidden_size=1536, intermediate_size=1536, num_attention_heads=12, head_dim=128)
    release.save_pretrained(tmp_path / "TriLM_3.9B_Unpacked")
    tokenizer.save_pretrained(tmp_path / "TriLM_3.9B_Unpacked")  # the release repos carry their tokenizer
    commands = _commands(CONVERT)
    assert len(commands) == 4, commands
    outputs = {command: _run(command, tmp_path).stdout for command in commands}
    assert "packed" in outputs[commands[-1]]
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        expected = release.float()(ids).logits
        packed = AutoModelForCausalLM.from_pretrained(tmp_path / "TriLM_3.9B", ternary_inference="dense").float()
        torch.testing.assert_close(packed(ids).logits, expected, rtol=1e-3, atol=1e-3)
        back = LlamaForCausalLM.from_pretrained(tmp_path / "TriLM_3.9B_back").float()
        torch.testing.assert_close(back(ids).logits, expected, rtol=1e-3, atol=1e-3)
    assert (tmp_path / "trilm.gguf").stat().st_size > 0


@pytest.mark.slow  # trains two tiny models 300 steps, quantizes at 4 widths, publishes, evaluates
@pytest.mark.timeout(3600)  # well over the suite's 900 s default on a loaded 2-core machine
def test_quickstart_pipeline_runs_as_written(tmp_path, tokenizer_dir, corpus_files):
    import json
    import socket

    shutil.copytree(tokenizer_dir, tmp_path / "tok")
    shutil.copy(corpus_files[0], tmp_path / "train.txt")
    shutil.copy(corpus_files[1], tmp_path / "eval.txt")
    commands = _commands(PIPELINE)
    served = [c for c in commands if c.startswith("spectra-hf hub serve")]
    assert len(served) == 1 and served[0].endswith("&")
    port = int(re.search(r"--port (\d+)", served[0]).group(1))
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            pytest.skip(f"port {port}, which the README's hub serve command uses, is taken on this machine")
    hub = None
    try:
        for command in commands:
            if command is served[0]:
                hub = subprocess.Popen(
                    shlex.split(command.rstrip("& ")), cwd=tmp_path, start_new_session=True,
                    env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                for _ in range(300):
                    with socket.socket() as probe:
                        if probe.connect_ex(("127.0.0.1", port)) == 0:
                            break
                    time.sleep(0.5)
                continue
            _run(command, tmp_path)
    finally:
        if hub is not None:
            os.killpg(hub.pid, signal.SIGTERM)
            hub.wait(timeout=60)
    suite = tmp_path / "suite"
    assert {"TriLM_99M", "FloatLM_99M", *(f"QuantLM_99M_{b}bit" for b in (3, 4, 6, 8))} <= {
        p.name for p in suite.iterdir()
    }
    assert (suite / "TriLM_99M" / "checkpoints" / "step256").is_dir()  # the revision the README loads
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["perplexity"]["perplexity"] > 1
