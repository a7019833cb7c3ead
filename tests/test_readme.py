"""The README's commands and code, run as written: every ```bash command of README.md is either run here (in a
scratch directory holding the local files it names: a tokenizer, train.txt / eval.txt, a tiny release checkpoint) or
skipped with the reason named in SKIPPED; every ```python block is run (PYTHON_BLOCKS: in fresh interpreters, blocks
of one chain in order in one interpreter, after the named CONTEXT lines that define what the README's text leaves to
the reader) or skipped with a reason. A new command or block that is neither fails the coverage tests.

Scaled down only through what the README documents: `--tiny true` models, and local text small enough that the
calibration uses fewer samples (the documented warning). Hub names are served by the local Hub the README starts;
the released SpectraSuite repos the Quickstart names are replaced through HUB_STANDINS, the one substitution table:
each name is published to the test session's local Hub (HF_ENDPOINT) as a tiny stand-in in the same format, and the
block runs unchanged against it.
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
    "python -m pytest": "the test suite itself (.ci/run runs the full run)",
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
        # The Python line after the publish, against the local Hub it published to (the README says to point
        # HF_ENDPOINT there).
        (revision_block,) = [b for b in readme_python_blocks() if _role(b) == "pipeline:revision"]
        run_python(revision_block, tmp_path, env={"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_DISABLE_XET": "1"})
        # The dynamics block, on the suite directory and eval text the pipeline above made.
        (dynamics_block,) = [b for b in readme_python_blocks() if _role(b) == "pipeline:dynamics"]
        # step300 is the final export's step: `main` holds the same weights, so dynamics lists it once, as step300
        check = "\nassert set(table['revision']) >= {'step1', 'step256', 'step300'}, set(table['revision'])"
        run_python(dynamics_block + check, tmp_path)
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


# ---- the install block is .ci/run's ------------------------------------------------------------------------------

CI_RUN = README.parent / ".ci" / "run"
CI_ONLY = re.compile(r"\s*\$\{TORCH_INDEX_URL:\+[^}]*\}")  # CI's CPU index for torch; a user's pip finds their own


def _install_block() -> list[str]:
    """The README's first ```bash block (Install), comments dropped."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    return [c for c in (re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()) if c]


def test_readme_install_block_is_what_ci_runs():
    text = CI_RUN.read_text(encoding="utf-8")
    section = re.search(r"# >>> README install.*?\n(.*?)# <<< README install", text, re.S)
    assert section, ".ci/run lost its README install markers"
    ci = [CI_ONLY.sub("", line).strip() for line in section.group(1).splitlines()]
    ci = [line for line in ci if line and not line.startswith("#")]
    assert ci == _install_block()
    assert "pip uninstall" not in text  # the install needs no removal step


def test_the_tests_import_the_package_ci_installed():
    """.ci/run installs the built wheel and runs the tests from outside the checkout with SPECTRA_HF_TEST_INSTALLED
    set: then spectra_hf (modeling and cards included) must come from the installed wheel, not the source tree."""
    import spectra_hf
    import spectra_hf.cards
    import spectra_hf.modeling

    origins = [Path(m.__file__).resolve() for m in (spectra_hf, spectra_hf.modeling, spectra_hf.cards)]
    repo = README.parent.resolve()
    if os.environ.get("SPECTRA_HF_TEST_INSTALLED") != "wheel":
        pytest.skip(f"a development run (spectra_hf from {origins[0].parent}); .ci/run checks the installed wheel")
    sources = [repo / folder for folder in ("spectra_hf", "modeling", "cards")]  # .ci/run's .venv is in the repo
    assert all("site-packages" in o.parts and not any(src in o.parents for src in sources) for o in origins), origins


# ---- ```python blocks ------------------------------------------------------------------------------------------

# Hub name the README uses -> the tiny stand-in published under that name to the session's local Hub.
HUB_STANDINS = {
    "SpectraSuite/TriLM_1.1B_Unpacked": "release-format TriLM (fp16 Llama, g*T, the 1.1B's 2 scale shards; "
    "tests/trilm_release.py) with the test tokenizer",
    "SpectraSuite/FloatLM_1.1B": "tiny FloatLM (config_for(tiny=True)) with the test tokenizer",
}
# First line of each ```python block -> the test that runs it (chains: "chain:<name>") or why it is skipped.
PYTHON_BLOCKS = {
    "import spectra_hf\nfrom transformers import AutoModelForCausalLM, AutoTokenizer": "chain:quickstart",
    "from transformers import AutoModelForCausalLM  # run with HF_ENDPOINT": "pipeline:revision",  # its local Hub
    "from spectra_hf.analysis.dynamics import checkpoint_dynamics": "pipeline:dynamics",  # on the pipeline's suite/
    "import spectra_hf  # registers model types": "chain:models",
    "from spectra_hf import TriLMForCausalLM": "chain:models",
    "import torch, torch._inductor.config": "chain:compile",
    "from spectra_hf.fast_decode import compile_for_decode": "chain:compile",
    "from spectra_hf.training import train": "chain:train",
    "from spectra_hf.evaluation import perplexity": "chain:eval",
}
# Lines run before a chain's blocks: what the README's prose leaves to the reader (a model, a tokenizer, texts).
CONTEXT = {
    "compile": "from spectra_hf import TriLMForCausalLM",
    "eval": (
        "import spectra_hf\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained('tiny-trilm')\n"
        "tokenizer = AutoTokenizer.from_pretrained('tok')\n"
        "texts = [line for line in open('eval.txt').read().splitlines() if line.strip()][:8]"
    ),
}


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _role(block: str) -> str | None:
    return next((role for head, role in PYTHON_BLOCKS.items() if block.startswith(head)), None)


def test_every_python_block_is_covered():
    blocks = readme_python_blocks()
    uncovered = [b.splitlines()[0] for b in blocks if _role(b) is None]
    assert not uncovered, f"README ```python blocks neither run nor skipped (add them to PYTHON_BLOCKS): {uncovered}"
    names = set(re.findall(r'"(SpectraSuite/[^"]+)"', "".join(b for b in blocks if _role(b) == "chain:quickstart")))
    assert names == set(HUB_STANDINS), names


def _chain(name: str) -> str:
    blocks = [b for b in readme_python_blocks() if _role(b) == f"chain:{name}"]
    assert blocks, f"no README block in chain {name!r}"
    return "\n".join([CONTEXT.get(name, ""), *blocks])


def run_python(code: str, cwd: Path, *, env: dict[str, str] | None = None, timeout: int = 1800) -> str:
    """Run `code` in a fresh interpreter in `cwd` (as a user's script); its stdout."""
    script = cwd / "readme_block.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"README code exited {done.returncode}:\n{code}\n{done.stdout[-3000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout


@pytest.mark.slow  # publishes two stand-ins, then a fresh interpreter loads, packs and generates
def test_quickstart_block_runs_as_written(tmp_path, tokenizer, local_hub):
    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM
    from trilm_release import release_model

    from spectra_hf.suite import config_for

    standins = {
        "SpectraSuite/TriLM_1.1B_Unpacked": release_model(2),
        "SpectraSuite/FloatLM_1.1B": AutoModelForCausalLM.from_config(config_for("FloatLM_1.1B", tiny=True)),
    }
    assert set(standins) == set(HUB_STANDINS)
    api = HfApi(endpoint=local_hub.url, token=False)
    for repo, model in standins.items():
        model.save_pretrained(tmp_path / repo)
        tokenizer.save_pretrained(tmp_path / repo)
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=tmp_path / repo)
    run_python(_chain("quickstart") + "\nassert out.shape[1] > 5", tmp_path)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """The Models and storage blocks run in one interpreter, as written (a 99M TriLM saved, exported packed, loaded)."""
    cwd = tmp_path_factory.mktemp("models")
    run_python(_chain("models"), cwd)
    return cwd


@pytest.mark.slow  # a 99M TriLM built, saved latent and packed, loaded back three ways
def test_models_and_storage_blocks_run_as_written(models_dir):
    from spectra_hf.checkpoints.io import read_config

    assert read_config(models_dir / "out" / "TriLM_99M")["weight_format"] == "packed"
    assert (models_dir / "trilm-99m" / "config.json").is_file()


@pytest.mark.slow  # torch.compile of a 99M TriLM on CPU (inductor, C++ wrapper), then generate() compiled
@pytest.mark.timeout(1800)
def test_static_cache_compile_blocks_run_as_written_with_grad_mode_on(models_dir):
    """No torch.no_grad(): users call the compiled step as written, with autograd's default grad mode on; then the
    compile_for_decode block generates through its compiled graph."""
    run_python(
        _chain("compile")
        + "\nassert token.shape == (1, 1) and out.logits.shape[:2] == (1, 1)"
        + "\nassert tokens.shape == (1, prompt_ids.shape[1] + 32), tokens.shape",
        models_dir,
    )


@pytest.mark.slow  # 300 tiny training steps through the Python API
@pytest.mark.timeout(3600)  # like the CLI pipeline's: minutes on a loaded 2-core machine
def test_train_block_runs_as_written(tmp_path, tokenizer_dir, corpus_files):
    shutil.copytree(tokenizer_dir, tmp_path / "tok")
    shutil.copy(corpus_files[0], tmp_path / "train.txt")
    run_python(_chain("train"), tmp_path)
    assert (tmp_path / "suite" / "TriLM_99M" / "config.json").is_file()


@pytest.mark.slow  # a fresh interpreter computing perplexity twice
def test_evaluation_block_runs_as_written(tmp_path, tokenizer_dir, corpus_files):
    from transformers import AutoModelForCausalLM

    from spectra_hf.suite import config_for

    shutil.copytree(tokenizer_dir, tmp_path / "tok")
    shutil.copy(corpus_files[1], tmp_path / "eval.txt")
    AutoModelForCausalLM.from_config(config_for("TriLM_99M", tiny=True, vocab_size=512)).save_pretrained(
        tmp_path / "tiny-trilm"
    )
    run_python(_chain("eval"), tmp_path)
