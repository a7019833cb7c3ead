"""Resume reproduces the uninterrupted run: kills at five moments, and a resume of a finished run, end with the same
last step, the same final weights (sha256), every planned export exactly once and no staging folder left."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from test_training import tiny_recipe

from spectra_hf import cli
from spectra_hf.checkpoints.exports import checkpoint_steps, read_export_info, read_planned_steps
from spectra_hf.checkpoints.staging import staged_directory
from spectra_hf.modeling.checkpoint_checks import INCOMPLETE_MARKER
from spectra_hf.training import train
from spectra_hf.training.resume import (
    complete_checkpoints,
    is_complete_checkpoint,
    newest_complete_checkpoint,
    recover_moved_checkpoints,
)

NAME = "TriLM_1.1B"
MAX_STEPS = 4  # checkpoints (and step exports) at 2 and 4, then the main export

# A training run killed with SIGKILL at one moment (argv[2]); the rest is `spectra_hf.training.train` as is.
KILLER = """
import os, signal, sys
from transformers import TrainerCallback
import spectra_hf.training.run as run
from spectra_hf.training import SpectraTrainer, train

recipe, moment = sys.argv[1], sys.argv[2]

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

class Killer(SpectraTrainer):
    def save_model(self, output_dir=None, _internal_call=False):
        super().save_model(output_dir, _internal_call)
        where = str(output_dir)
        if moment == "first checkpoint save" and where.endswith("checkpoint-2"):
            kill()  # weights written; optimizer, RNG states and trainer_state.json not yet
        if moment == "last checkpoint save" and where.endswith("checkpoint-4"):
            kill()
        if moment == "last step export" and "/.step4.tmp-" in where:
            kill()  # inside the staging folder of checkpoints/step4
        if moment == "main export" and "/.TriLM_1.1B.tmp-" in where:
            kill()

class KillAtStep3(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if moment == "mid-training" and state.global_step == 3:
            kill()

run.SpectraTrainer = Killer
train(recipe, callbacks=[KillAtStep3()])
"""

MOMENTS = ("mid-training", "first checkpoint save", "last checkpoint save", "last step export", "main export")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outcome(root: Path) -> dict:
    """What a finished run leaves: checkpoint dirs, exports, the weights' sha256s, stray staging folders."""
    suite, run = root / "suite", root / "run"
    exports = {"main": suite / NAME, **{f"step{s}": suite / NAME / "checkpoints" / f"step{s}" for s in (2, 4)}}
    return {
        "checkpoints": sorted(p.name for p in run.glob("checkpoint-*")),
        "step_exports": checkpoint_steps(suite, NAME),
        "checkpoints_folder": sorted(p.name for p in (suite / NAME / "checkpoints").iterdir()),
        "export_steps": {name: read_export_info(path).step for name, path in exports.items()},
        "sha256": {
            "final latent weights": _sha256(run / "model.safetensors"),
            **{name: _sha256(path / "model.safetensors") for name, path in exports.items()},
        },
        "staging": sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name),
    }


@pytest.fixture(scope="module")
def recipe_for(tmp_path_factory, tokenizer_dir, corpus_files):
    def make(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        recipe = tiny_recipe(
            root, tokenizer_dir, corpus_files[0], max_steps=MAX_STEPS, save_steps=2, suite_dir=str(root / "suite"),
            export_name=NAME, ternary_stats=False, save_total_limit=None,
        )  # fmt: skip
        path = root / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return make


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, recipe_for):
    root = tmp_path_factory.mktemp("uninterrupted")
    train(recipe_for(root))
    return root, _outcome(root)


def _killed_runs(tmp_path: Path, recipe_for, moments) -> dict[str, Path]:
    roots = {moment: tmp_path / moment.replace(" ", "-") for moment in moments}

    def kill(moment: str) -> subprocess.CompletedProcess:
        recipe = recipe_for(roots[moment])
        return subprocess.run([sys.executable, "-c", KILLER, str(recipe), moment], capture_output=True, text=True)

    with ThreadPoolExecutor(len(roots)) as pool:  # the runs are independent: kill them side by side
        for moment, done in zip(roots, pool.map(kill, roots), strict=True):
            assert done.returncode == -9, f"{moment}: {done.stderr[-3000:]}"
    return roots


def _expected(reference: dict) -> dict:
    assert reference["checkpoints"] == ["checkpoint-2", "checkpoint-4"]
    assert reference["step_exports"] == [2, 4] and reference["export_steps"] == {"main": 4, "step2": 2, "step4": 4}
    assert reference["staging"] == []
    return reference


@pytest.mark.slow  # three training processes killed with SIGKILL, then resumed; a finished run resumed (~60 s)
def test_resume_after_a_kill_or_of_a_finished_run_gives_the_uninterrupted_result(
    tmp_path, recipe_for, uninterrupted, capsys
):
    reference_root, reference = uninterrupted
    expected = _expected(reference)
    roots = _killed_runs(tmp_path, recipe_for, ("mid-training", "last step export", "main export"))
    assert list((roots["last step export"] / "suite" / NAME / "checkpoints").glob(".step4.tmp-*"))
    assert list((roots["main export"] / "suite").glob(f".{NAME}.tmp-*"))
    for moment, root in roots.items():
        result = train(root / "recipe.yaml", overrides=["--resume_from_checkpoint", "true"])
        assert result.trainer.state.global_step == MAX_STEPS, moment
        assert _outcome(root) == expected, moment
        planned = read_planned_steps(root / "suite", NAME)
        assert (planned.steps, planned.max_steps) == ([2, 4], MAX_STEPS)
    # the finished run, resumed as a user would: through the command line, which says that nothing was trained
    capsys.readouterr()
    assert cli.main(["train", str(reference_root / "recipe.yaml"), "--resume_from_checkpoint", "true"]) == 0
    assert "the run was already at step 4 (max_steps): nothing to train" in capsys.readouterr().out
    assert _outcome(reference_root) == expected


@pytest.mark.slow  # two training processes killed while saving a checkpoint, then resumed (~40 s)
def test_a_kill_during_a_checkpoint_save_resumes_from_the_newest_complete_one(
    tmp_path, recipe_for, uninterrupted, caplog
) -> None:
    _, reference = uninterrupted
    expected = _expected(reference)
    roots = _killed_runs(tmp_path, recipe_for, ("first checkpoint save", "last checkpoint save"))
    first, last = roots["first checkpoint save"] / "run", roots["last checkpoint save"] / "run"
    assert (first / "checkpoint-2").is_dir() and not is_complete_checkpoint(first / "checkpoint-2")
    assert (last / "checkpoint-4").is_dir() and not is_complete_checkpoint(last / "checkpoint-4")
    assert complete_checkpoints(last) == [last / "checkpoint-2"]
    said = {}
    for moment, root in roots.items():
        caplog.clear()
        result = train(root / "recipe.yaml", overrides=["--resume_from_checkpoint", "true"])
        said[moment] = caplog.text
        assert result.trainer.state.global_step == MAX_STEPS, moment
        assert _outcome(root) == expected, moment
    assert "no complete checkpoint" in said["first checkpoint save"] and "from scratch" in said["first checkpoint save"]
    assert "resuming from" in said["last checkpoint save"] and "checkpoint-2" in said["last checkpoint save"]
    assert "checkpoint-4 is incomplete" in said["last checkpoint save"]


# ---- fast: what "complete" means, and putting back an interrupted export's checkpoints -----------------------


def test_a_checkpoint_is_complete_when_its_trainer_state_names_its_step(tmp_path) -> None:
    def checkpoint(step: int, state: str | None) -> Path:
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (path / "trainer_state.json").write_text(state)
        return path

    good = checkpoint(2, json.dumps({"global_step": 2, "log_history": []}))
    no_state = checkpoint(4, None)
    torn = checkpoint(6, json.dumps({"global_step": 6, "log_history": []})[:-3])  # a write cut short
    wrong_step = checkpoint(8, json.dumps({"global_step": 7}))
    (tmp_path / "checkpoint-x").mkdir()
    assert [is_complete_checkpoint(p) for p in (good, no_state, torn, wrong_step)] == [True, False, False, False]
    assert complete_checkpoints(tmp_path) == [good]
    assert newest_complete_checkpoint(tmp_path) == good
    # the newer incomplete ones are removed (a new save of that step would mix with their files); good is kept
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-x"]
    assert newest_complete_checkpoint(tmp_path / "absent") is None


def test_checkpoints_moved_into_an_interrupted_export_are_put_back(tmp_path) -> None:
    """A kill while `export_release` replaced the main export, after it moved `checkpoints/` into its staging
    folder: the next export puts each step folder back before the staging folder is removed."""
    target = tmp_path / "suite" / NAME
    (target / "checkpoints" / "step4").mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt), staged_directory(target, replace=True) as staging:
        (staging / "checkpoints" / "step2").mkdir(parents=True)
        (staging / "checkpoints" / "step2" / "model.safetensors").write_bytes(b"step 2")
        (staging / "checkpoints" / "step4").mkdir()
        # staged_directory removes its staging folder on an exception; a kill -9 would not: keep a copy
        abandoned = target.with_name(f".{NAME}.tmp-killed")
        abandoned.mkdir()
        for entry in staging.iterdir():
            entry.rename(abandoned / entry.name)
        raise KeyboardInterrupt
    assert (abandoned / INCOMPLETE_MARKER).is_file()
    moved = recover_moved_checkpoints(target)
    assert moved == [target / "checkpoints" / "step2"]
    assert (target / "checkpoints" / "step2" / "model.safetensors").read_bytes() == b"step 2"
    assert not (abandoned / "checkpoints" / "step2").exists() and (abandoned / "checkpoints" / "step4").is_dir()
