"""SpectraTrainer end to end: recipes vs the registry, the CLI, suite exports, resume exactness and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, TrainerCallback

from spectra_hf import cli
from spectra_hf.checkpoints.exports import checkpoint_steps, read_export_info
from spectra_hf.errors import SpectraError
from spectra_hf.modeling import TernaryLinear
from spectra_hf.suite import BATCH_TOKENS, CONTEXT_LENGTH, SIZES, TOKENS, all_models
from spectra_hf.training import SpectraTrainer, SpectraTrainingArguments, parse_recipe, train
from spectra_hf.training.arguments import RECIPES_DIR


def tiny_recipe(tmp_path: Path, tokenizer_dir: Path, train_file: Path, **values) -> dict:
    return {
        "model": "TriLM_1.1B",  # 2 scale shards
        "tiny": True,
        "tokenizer": str(tokenizer_dir),
        "data_files": [str(train_file)],
        "block_size": 32,
        "per_device_train_batch_size": 2,
        "learning_rate": SIZES["1.1B"].trilm_lr,
        "lr_after_drop": SIZES["1.1B"].trilm_lr_after_drop,
        "warmup_steps": 2,
        "logging_steps": 1,
        "output_dir": str(tmp_path / "run"),
        "disable_tqdm": True,
        **values,
    }


# ---- recipes -------------------------------------------------------------------------------------------------


def test_the_18_recipes_agree_with_the_registry() -> None:
    trained = [m for m in all_models() if m.family != "quantlm"]
    assert sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) == sorted(m.name for m in trained)
    for model in trained:
        model_args, data_args, args = parse_recipe(RECIPES_DIR / f"{model.name}.yaml", defaults={"use_cpu": True})
        spec = SIZES[model.size]
        assert model_args.model == model.name
        assert args.schedule == model.family
        assert data_args.block_size == CONTEXT_LENGTH
        assert args.global_batch_size * data_args.block_size == BATCH_TOKENS[model.family]
        assert args.max_steps == TOKENS // BATCH_TOKENS[model.family]
        assert (args.adam_beta1, args.adam_beta2) == (0.9, 0.95)
        if model.family == "trilm":
            assert (args.learning_rate, args.lr_after_drop) == (spec.trilm_lr, spec.trilm_lr_after_drop)
            assert args.lr_drop_fraction == 0.5 and args.weight_decay_off_fraction == pytest.approx(2 / 3, abs=1e-6)
        else:
            assert (args.learning_rate, args.lr_after_drop) == (spec.floatlm_lr, None)


def test_overrides_win_over_the_recipe() -> None:
    _, data_args, args = parse_recipe(
        "TriLM_99M", ["--max_steps", "7", "--block_size", "16"], defaults={"use_cpu": True}
    )
    assert (args.max_steps, data_args.block_size) == (7, 16)
    _, _, args = parse_recipe("FloatLM_99M", {"learning_rate": 1e-3}, defaults={"use_cpu": True})
    assert args.learning_rate == 1e-3


# ---- parameter groups ----------------------------------------------------------------------------------------


def test_no_weight_decay_on_norms_and_biases(tmp_path) -> None:
    from spectra_hf.suite import config_for

    model = AutoModelForCausalLM.from_config(config_for("TriLM_99M", tiny=True))
    trainer = SpectraTrainer(model=model, args=SpectraTrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["spectra_decay"] for p in g["params"]}
    plain = {names[id(p)] for g in optimizer.param_groups if not g["spectra_decay"] for p in g["params"]}
    assert plain and all("norm" in n for n in plain)
    ternary = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, TernaryLinear)}
    assert ternary <= decayed
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= decayed
    assert decayed | plain == set(names.values())


# ---- end to end through the CLI --------------------------------------------------------------------------------


def test_cli_trains_from_a_recipe_and_exports_the_suite_layout(tmp_path, tokenizer_dir, corpus_files) -> None:
    recipe = tiny_recipe(
        tmp_path, tokenizer_dir, corpus_files[0], global_batch_size=4, suite_dir=str(tmp_path / "suite")
    )
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    argv = ["train", str(recipe_file), "--max_steps", "6", "--checkpoint_spacing", "log", "--save_steps", "6"]
    assert cli.main(argv) == 0

    suite = tmp_path / "suite"
    assert checkpoint_steps(suite, "TriLM_1.1B") == [1, 2, 4, 6]  # Pythia's log spacing, then every save_steps
    tokens_per_step = 4 * 32  # global_batch_size x block_size (2 per device x 2 accumulation steps)
    for step in (1, 6):
        export = suite / "TriLM_1.1B" / "checkpoints" / f"step{step}"
        info = read_export_info(export)
        assert (info.step, info.tokens_seen, info.format, info.branch) == (
            step,
            step * tokens_per_step,
            "packed",
            f"step{step}",
        )
        model = AutoModelForCausalLM.from_pretrained(export)
        assert model.config.model_type == "trilm" and model.config.weight_format == "packed"
        assert (export / "tokenizer.json").is_file()
    final = read_export_info(suite / "TriLM_1.1B")
    assert final.step == 6

    # The packed release computes what the latent training checkpoint computes.
    latent = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint-6")
    packed = AutoModelForCausalLM.from_pretrained(suite / "TriLM_1.1B", ternary_inference="dense")
    ids = torch.randint(0, 512, (1, 16))
    torch.testing.assert_close(packed(ids).logits, latent(ids).logits, rtol=1e-5, atol=1e-5)

    log = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    stats = [entry for entry in log if "ternary/zero_fraction" in entry]
    assert len(stats) == 6 and all(0 < entry["ternary/zero_fraction"] < 1 for entry in stats)
    assert all(0 <= entry["ternary/flip_fraction"] <= 1 for entry in stats[1:])
    assert all(entry["ternary/scale/model.layers.0.mlp.down_proj"] > 0 for entry in stats)


# ---- resume ------------------------------------------------------------------------------------------------


class StopAt(TrainerCallback):
    """Interrupt training after `step` optimizer steps (as a crash or preemption would, after a checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def test_resume_gives_the_same_lr_wd_and_losses(tmp_path, tokenizer_dir, corpus_files) -> None:
    steps = 12
    base = tiny_recipe(tmp_path, tokenizer_dir, corpus_files[0], max_steps=steps, save_steps=5, ternary_stats=False)
    whole = train({**base, "output_dir": str(tmp_path / "whole")}).trainer.state.log_history
    train({**base, "output_dir": str(tmp_path / "cut")}, callbacks=[StopAt(5)])
    assert not (tmp_path / "cut" / "checkpoint-10").exists()
    # "true", as `--resume_from_checkpoint true` gives it: the latest checkpoint in output_dir (checkpoint-5).
    resumed = train({**base, "output_dir": str(tmp_path / "cut")}, overrides=["--resume_from_checkpoint", "true"])
    resumed = resumed.trainer.state.log_history

    def by_step(history):
        return {e["step"]: e for e in history if "loss" in e}

    whole, resumed = by_step(whole), by_step(resumed)
    assert sorted(resumed) == list(range(1, steps + 1))
    for step in range(6, steps + 1):
        assert resumed[step]["learning_rate"] == whole[step]["learning_rate"]
        assert resumed[step]["weight_decay"] == whole[step]["weight_decay"]
        assert resumed[step]["loss"] == pytest.approx(whole[step]["loss"], rel=1e-6), step


def test_resume_false_starts_over_and_a_path_named_true_is_a_path(tmp_path, tokenizer_dir, corpus_files) -> None:
    base = tiny_recipe(tmp_path, tokenizer_dir, corpus_files[0], max_steps=2, save_steps=1, ternary_stats=False)
    train(base)
    again = train(base, overrides=["--resume_from_checkpoint", "False"]).trainer.state.log_history
    assert [e["step"] for e in again if "loss" in e] == [1, 2]  # trained from step 0, not resumed at 2
    # "true" with no complete checkpoint: from scratch, as the same command run again after an early kill needs
    fresh = train({**base, "output_dir": str(tmp_path / "fresh")}, overrides=["--resume_from_checkpoint", "true"])
    assert [e["step"] for e in fresh.trainer.state.log_history if "loss" in e] == [1, 2]


# ---- stock TrainingArguments ---------------------------------------------------------------------------------


def _user_blocks(tokenizer, texts, *, block_size: int) -> list[dict[str, list[int]]]:
    """Blocks of `block_size` token ids, as a user's own preprocessing would make them."""
    ids = [token for text in texts for token in (*tokenizer(text)["input_ids"], tokenizer.eos_token_id)]
    return [
        {"input_ids": ids[i : i + block_size], "labels": ids[i : i + block_size]}
        for i in range(0, len(ids) - block_size + 1, block_size)
    ]


def test_stock_training_arguments_get_the_paper_trilm_schedule(tmp_path, tokenizer, corpus_texts, caplog) -> None:
    import logging

    from transformers import TrainingArguments

    from spectra_hf import TriLMConfig, TriLMForCausalLM

    config = TriLMConfig(  # a user's own small TriLM: not a suite size
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=8,
        learning_rate=1e-3,
        per_device_train_batch_size=2,
        logging_steps=1,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
    )
    with caplog.at_level(logging.INFO, logger="spectra_hf.training.trainer"):
        trainer = SpectraTrainer(
            model=TriLMForCausalLM(config),
            args=args,
            train_dataset=_user_blocks(tokenizer, corpus_texts[:60], block_size=32),
        )
        trainer.train()
    logged = {e["step"]: e["learning_rate"] for e in trainer.state.log_history if "loss" in e}
    # The paper's TriLM schedule written out by hand (SPECTRA.md): linear decay to 0.1 x the peak in force, no
    # warmup (TrainingArguments' default 0), peak 1e-3 dropped at half of training to 1e-3 x 1.5e-3 / 2.4e-3.
    peak_after_drop = 1e-3 * 1.5e-3 / 2.4e-3
    expected = {}
    for step in range(8):
        peak = 1e-3 if step < 4 else peak_after_drop
        expected[step + 1] = peak * (0.1 + 0.9 * (1 - step / 8))
    assert logged == pytest.approx(expected, rel=1e-6)
    decays = [e["weight_decay"] for e in trainer.state.log_history if "loss" in e]
    assert decays == [0.0] * 8  # TrainingArguments' weight_decay (0.0) kept as given
    text = caplog.text
    assert "not a suite size" in text and "dropping to 0.000625" in text
    assert "linear decay over 8 steps" in text and "at step 4" in text


def test_stock_training_arguments_for_a_suite_architecture_use_its_drop_ratio(tmp_path, caplog) -> None:
    import logging

    from transformers import TrainingArguments

    from spectra_hf.suite import config_for
    from spectra_hf.training.trainer import spectra_arguments

    with torch.device("meta"):  # the full 390M architecture, without allocating it
        model = AutoModelForCausalLM.from_config(config_for("TriLM_390M"))
    with caplog.at_level(logging.INFO, logger="spectra_hf.training.trainer"):
        args = spectra_arguments(
            TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-3, use_cpu=True), model=model
        )
    assert args.schedule == "trilm"
    assert args.lr_after_drop == pytest.approx(3e-3 * 1.2e-3 / 1.8e-3)  # 390M: 1.8e-3 -> 1.2e-3
    assert "suite size 390M" in caplog.text and "peak LR 0.0018" in caplog.text

    floatlm = AutoModelForCausalLM.from_config(config_for("FloatLM_99M", tiny=True))
    trainer = SpectraTrainer(model=floatlm, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    assert (trainer.args.schedule, trainer.args.lr_after_drop) == ("floatlm", None)


# ---- bad input ---------------------------------------------------------------------------------------------


def assert_nothing_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert not run.exists() or not any(run.glob("checkpoint-*"))
    assert not (tmp_path / "suite").exists()


def test_unknown_recipe_key_is_named(tmp_path, tokenizer_dir, corpus_files) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump({**tiny_recipe(tmp_path, tokenizer_dir, corpus_files[0]), "learning_rat": 1e-3}))
    with pytest.raises(SpectraError, match=r"unknown key 'learning_rat'.*did you mean 'learning_rate'"):
        train(recipe)
    assert cli.main(["train", str(recipe)]) == 2
    assert_nothing_written(tmp_path)


def test_missing_data_files(tmp_path, tokenizer_dir) -> None:
    recipe = tiny_recipe(tmp_path, tokenizer_dir, tmp_path / "absent.txt", suite_dir=str(tmp_path / "suite"))
    with pytest.raises(SpectraError, match=r"not found.*absent\.txt"):
        train(recipe)
    assert_nothing_written(tmp_path)


def test_global_batch_not_divisible(tmp_path, tokenizer_dir, corpus_files) -> None:
    recipe = tiny_recipe(
        tmp_path, tokenizer_dir, corpus_files[0], global_batch_size=5, suite_dir=str(tmp_path / "suite")
    )
    with pytest.raises(SpectraError, match="global_batch_size=5 is not divisible by per_device_train_batch_size=2"):
        train(recipe)
    assert_nothing_written(tmp_path)


def test_resume_from_an_incompatible_checkpoint(tmp_path, tokenizer_dir, corpus_files) -> None:
    floatlm = tiny_recipe(tmp_path, tokenizer_dir, corpus_files[0], model="FloatLM_1.1B", max_steps=1, save_steps=1)
    train({**floatlm, "output_dir": str(tmp_path / "float"), "ternary_stats": False})
    recipe = tiny_recipe(
        tmp_path,
        tokenizer_dir,
        corpus_files[0],
        max_steps=2,
        resume_from_checkpoint=str(tmp_path / "float" / "checkpoint-1"),
    )
    with pytest.raises(
        SpectraError, match=r"does not fit this model.*model_type: checkpoint 'floatlm' vs model 'trilm'"
    ):
        train(recipe)
    assert_nothing_written(tmp_path)


# ---- a kill between a checkpoint and its suite export ------------------------------------------------------

KILLED_RUN = """
import os, signal, sys
from transformers import default_data_collator
from spectra_hf.training import SpectraTrainer, train
from spectra_hf.training.arguments import parse_recipe
from spectra_hf.training.data import load_text, pack_documents
from spectra_hf.training.run import build_model, load_tokenizer, machine_defaults

class KilledBeforeExport(SpectraTrainer):
    def export_release(self, target, **kwargs):
        if self.state.global_step == 4 and "checkpoints" in str(target):
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9: checkpoint-4 is on disk, its suite export is not
        return super().export_release(target, **kwargs)

model_args, data_args, args = parse_recipe(sys.argv[1], defaults=machine_defaults())
tokenizer = load_tokenizer(model_args.tokenizer)
data = pack_documents(load_text(data_args), tokenizer, text_column="text", block_size=data_args.block_size)
trainer = KilledBeforeExport(model=build_model(model_args, vocab_size=len(tokenizer)), args=args,
                             train_dataset=data, processing_class=tokenizer, data_collator=default_data_collator)
trainer.train()
"""


@pytest.mark.slow  # a training subprocess killed with SIGKILL, then a resumed run (~30 s)
def test_resume_writes_the_export_a_kill_lost_and_the_plan_names_it(tmp_path, tokenizer_dir, corpus_files) -> None:
    import subprocess
    import sys

    from spectra_hf.checkpoints.exports import missing_checkpoint_steps, read_planned_steps

    suite = tmp_path / "suite"
    recipe = tiny_recipe(
        tmp_path, tokenizer_dir, corpus_files[0], max_steps=6, save_steps=2, suite_dir=str(suite),
        export_name="TriLM_1.1B", ternary_stats=False,
    )  # fmt: skip
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(recipe_file)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint-4").is_dir()
    assert checkpoint_steps(suite, "TriLM_1.1B") == [2]
    planned = read_planned_steps(suite, "TriLM_1.1B")
    assert (planned.steps, planned.max_steps) == ([2, 4, 6], 6)
    assert missing_checkpoint_steps(suite, "TriLM_1.1B") == [4, 6]  # publish reports these as missing

    train(recipe_file, overrides=["--resume_from_checkpoint", "true"])
    assert checkpoint_steps(suite, "TriLM_1.1B") == [2, 4, 6]
    assert missing_checkpoint_steps(suite, "TriLM_1.1B") == []
    export = suite / "TriLM_1.1B" / "checkpoints" / "step4"
    info = read_export_info(export)
    assert (info.step, info.format, info.tokens_seen) == (4, "packed", 4 * 2 * 32)
    latent = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint-4")
    packed = AutoModelForCausalLM.from_pretrained(export, ternary_inference="dense")
    ids = torch.randint(0, 512, (1, 16))
    torch.testing.assert_close(packed(ids).logits, latent(ids).logits, rtol=1e-5, atol=1e-5)
    assert (export / "tokenizer.json").is_file() and not (export / "optimizer.pt").exists()
