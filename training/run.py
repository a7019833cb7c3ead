"""`train()`: one call from a recipe to a trained model, single-process or under torchrun / accelerate launch."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    default_data_collator,
    set_seed,
)

from spectra_hf.checkpoints.exports import TRAINING_DATA_KEY, model_dir
from spectra_hf.errors import CheckpointError, ConfigError
from spectra_hf.suite import config_for, get_model
from spectra_hf.workdir_lock import workdir_lock

from .arguments import DataArguments, ModelArguments, SpectraTrainingArguments, parse_recipe
from .data import load_text, pack_documents
from .trainer import SpectraTrainer


@dataclass
class TrainResult:
    """What `train` returns: the trainer (its `state.log_history`, `model`), the metrics and the final exports.

    Attributes:
        trainer: the `SpectraTrainer` after training.
        metrics: `TrainOutput.metrics` (train_loss, runtime, ...).
        output_dir: where the resumable checkpoints and the final `save_model` went.
        export_dir: the final release export in the suite directory (None without `suite_dir`).
    """

    trainer: SpectraTrainer
    metrics: dict[str, float]
    output_dir: Path
    export_dir: Path | None


def machine_defaults() -> dict[str, Any]:
    """Arguments a recipe needs on this machine unless it says otherwise: CPU and gloo when there is no GPU."""
    if torch.cuda.is_available():
        return {}
    defaults: dict[str, Any] = {"use_cpu": True}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        defaults["ddp_backend"] = "gloo"
    return defaults


def set_gradient_accumulation(args: SpectraTrainingArguments, *, tensor_parallel: int = 1) -> None:
    """Derive `gradient_accumulation_steps` from `global_batch_size`, the per-device batch and the data-parallel
    process count (processes / tensor-parallel degree: the ranks of one TP group see the same batch)."""
    if args.global_batch_size is None:
        return
    data_parallel = args.world_size // tensor_parallel
    per_step = args.per_device_train_batch_size * data_parallel
    if args.global_batch_size % per_step:
        raise ConfigError(
            f"global_batch_size={args.global_batch_size} is not divisible by per_device_train_batch_size="
            f"{args.per_device_train_batch_size} x {data_parallel} data-parallel process(es) = {per_step}: choose a "
            "per-device batch size (or process count) whose product divides it"
        )
    args.gradient_accumulation_steps = args.global_batch_size // per_step


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"cannot load tokenizer {name_or_path!r} ({error.__class__.__name__}): give a local tokenizer directory "
            "or a Hub name reachable from this machine"
        ) from error


def training_data_record(data_args: DataArguments) -> dict[str, list[str]]:
    """What the exports record as their training data (model cards state it): local file names, or the dataset."""
    if data_args.data_files:
        return {"files": [Path(path).name for path in data_args.data_files]}
    return {"datasets": [data_args.dataset_name]} if data_args.dataset_name else {}


def build_model(model_args: ModelArguments, *, vocab_size: int) -> PreTrainedModel:
    """A fresh suite model (`model`, optionally `tiny`) or the one in `model_path`, sharded at load time by
    transformers (`DistributedConfig`) when fsdp_size or tp_size > 1."""
    family = get_model(model_args.model).family
    if family == "quantlm":
        raise ConfigError(f"{model_args.model} is post-training quantized, not trained: train its FloatLM")
    if model_args.model_path:
        kwargs: dict[str, Any] = {}
        if model_args.fsdp_size > 1 or model_args.tp_size > 1:
            from transformers.distributed import DistributedConfig

            kwargs["distributed_config"] = DistributedConfig(fsdp_size=model_args.fsdp_size, tp_size=model_args.tp_size)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_args.model_path, **kwargs)
        except OSError as error:
            raise CheckpointError(f"cannot load model_path {model_args.model_path!r}: {error}") from error
        if model.config.model_type != family:
            raise ConfigError(
                f"model_path holds a {model.config.model_type!r} model but the recipe trains {model_args.model} "
                f"({family!r}): fix model or model_path"
            )
        return model
    if model_args.fsdp_size > 1 or model_args.tp_size > 1:
        raise ConfigError(
            "fsdp_size / tp_size > 1 shard a model at load time: set model_path (create one with spectra-hf init)"
        )
    overrides = {"vocab_size": vocab_size} if model_args.tiny else {}
    config = config_for(model_args.model, tiny=model_args.tiny, **overrides)
    if vocab_size > config.vocab_size:
        raise ConfigError(f"the tokenizer has {vocab_size} tokens but {model_args.model} only {config.vocab_size}")
    return AutoModelForCausalLM.from_config(config)


def train(
    recipe: str | Path | Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Train a suite model from a recipe and write its checkpoints and exports.

    Args:
        recipe: a YAML file, a suite model name (its bundled recipe, e.g. "TriLM_99M") or a mapping of recipe keys.
        overrides: recipe keys to replace, as a mapping (`{"tiny": True, "max_steps": 300}`) or command-line
            strings (`["--max_steps", "300"]`).
        callbacks: extra `TrainerCallback`s.

    Works the same under `torchrun` / `accelerate launch` (one call per process).
    """
    model_args, data_args, args = parse_recipe(recipe, overrides, defaults=machine_defaults())
    set_gradient_accumulation(args, tensor_parallel=model_args.tp_size)
    if args.export_name is None:
        args.export_name = model_args.model
    assert args.output_dir is not None, "TrainingArguments.__post_init__ sets a default output_dir"
    # One run per output_dir: the process that saves holds its lock (other ranks of the same run do not take it).
    with workdir_lock(args.output_dir, command="spectra-hf train") if args.should_save else nullcontext():
        return _train(model_args, data_args, args, callbacks=callbacks)


def _train(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: SpectraTrainingArguments,
    *,
    callbacks: Sequence[TrainerCallback],
) -> TrainResult:
    with args.main_process_first(desc="loading the training data"):
        documents = load_text(data_args)
    tokenizer = load_tokenizer(model_args.tokenizer)
    with args.main_process_first(desc="tokenizing and packing the training data"):
        dataset = pack_documents(
            documents, tokenizer, text_column=data_args.text_column, block_size=data_args.block_size
        )
    set_seed(args.seed)
    model = build_model(model_args, vocab_size=len(tokenizer))
    trainer = SpectraTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=list(callbacks),
    )
    trainer.export_extra = {TRAINING_DATA_KEY: training_data_record(data_args)}
    output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    export_dir = None
    if args.suite_dir:
        export_dir = trainer.export_release(model_dir(args.suite_dir, trainer.export_name))
    assert args.output_dir is not None, "TrainingArguments.__post_init__ sets a default output_dir"
    return TrainResult(trainer=trainer, metrics=output.metrics, output_dir=Path(args.output_dir), export_dir=export_dir)
