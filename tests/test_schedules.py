"""The LR / WD curves that tiny TriLM and FloatLM runs log in trainer_state.json, against the paper's schedules.

The expected values are computed here from the written-out formulas (not from spectra_hf.training.schedules):
TriLM: linear warmup, linear decay to final_ratio x the peak in force, peak drops at half, WD 0 from two thirds;
FloatLM: linear warmup, cosine decay, constant WD. Logged step s reports the values of optimizer step s - 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spectra_hf.suite import SIZES
from spectra_hf.training import train

STEPS, WARMUP, FINAL, WD = 90, 6, 0.1, 0.1


def expected_trilm(step: int, peak: float, after: float) -> tuple[float, float]:
    height = peak if step < STEPS // 2 else after
    if step < WARMUP:
        lr = height * step / WARMUP
    else:
        lr = height * (FINAL + (1 - FINAL) * (1 - (step - WARMUP) / (STEPS - WARMUP)))
    wd = WD if step < round(STEPS * 2 / 3) else 0.0
    return lr, wd


def expected_floatlm(step: int, peak: float) -> tuple[float, float]:
    if step < WARMUP:
        return peak * step / WARMUP, WD
    progress = (step - WARMUP) / (STEPS - WARMUP)
    return peak * (FINAL + (1 - FINAL) * 0.5 * (1 + math.cos(math.pi * progress))), WD


def run_tiny(name: str, tmp_path: Path, tokenizer_dir: Path, train_file: Path, **overrides) -> list[dict]:
    """Train a tiny `name` for STEPS steps, logging every step; returns trainer_state.json's log_history."""
    size = SIZES[name.split("_")[1]]
    recipe = {
        "model": name,
        "tiny": True,
        "tokenizer": str(tokenizer_dir),
        "data_files": [str(train_file)],
        "block_size": 32,
        "per_device_train_batch_size": 2,
        "max_steps": STEPS,
        "warmup_steps": WARMUP,
        "learning_rate": size.trilm_lr if name.startswith("TriLM") else size.floatlm_lr,
        "weight_decay": WD,
        "final_lr_ratio": FINAL,
        "logging_steps": 1,
        "save_steps": STEPS,
        "ternary_stats": False,
        "output_dir": str(tmp_path / name),
        "disable_tqdm": True,
        **overrides,
    }
    train(recipe)
    state = json.loads((tmp_path / name / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def assert_lower_loss(logs: list[dict]) -> None:
    first = sum(entry["loss"] for entry in logs[:10]) / 10
    last = sum(entry["loss"] for entry in logs[-10:]) / 10
    assert last < first - 0.3, (first, last)


def test_trilm_curves_follow_the_paper_and_loss_falls(tmp_path, tokenizer_dir, corpus_files) -> None:
    size = SIZES["99M"]
    logs = run_tiny("TriLM_99M", tmp_path, tokenizer_dir, corpus_files[0], lr_after_drop=size.trilm_lr_after_drop)
    assert [entry["step"] for entry in logs] == list(range(1, STEPS + 1))
    for entry in logs:
        lr, wd = expected_trilm(entry["step"] - 1, size.trilm_lr, size.trilm_lr_after_drop)
        assert entry["learning_rate"] == pytest.approx(lr, rel=1e-9, abs=1e-15), entry
        assert entry["weight_decay"] == wd, entry
    # The two interventions are visible where the paper puts them.
    by_step = {entry["step"]: entry for entry in logs}
    assert by_step[STEPS // 2 + 1]["learning_rate"] < 0.7 * by_step[STEPS // 2]["learning_rate"]
    two_thirds = round(STEPS * 2 / 3)
    assert by_step[two_thirds]["weight_decay"] == WD and by_step[two_thirds + 1]["weight_decay"] == 0
    assert_lower_loss(logs)


def test_floatlm_cosine_with_constant_weight_decay(tmp_path, tokenizer_dir, corpus_files) -> None:
    size = SIZES["99M"]
    logs = run_tiny("FloatLM_99M", tmp_path, tokenizer_dir, corpus_files[0])
    assert len(logs) == STEPS
    for entry in logs:
        lr, wd = expected_floatlm(entry["step"] - 1, size.floatlm_lr)
        assert entry["learning_rate"] == pytest.approx(lr, rel=1e-9, abs=1e-15), entry
        assert entry["weight_decay"] == wd
    assert_lower_loss(logs)
