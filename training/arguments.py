"""Recipe arguments: what a `training/recipes/*.yaml` file may set, and how recipes and overrides are parsed.

A recipe is a flat YAML mapping read with `HfArgumentParser` into three dataclasses: `ModelArguments`,
`DataArguments` and `SpectraTrainingArguments` (transformers' `TrainingArguments` plus the paper's schedule and the
suite exports). Overrides (`--key value` strings, or a mapping) are applied after the recipe, so they win.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from spectra_hf.errors import ConfigError

from .schedules import (
    ADAM_BETAS,
    DEFAULT_ADAM_EPSILON,
    DEFAULT_FINAL_LR_RATIO,
    DEFAULT_LR_DROP_FRACTION,
    DEFAULT_MAX_GRAD_NORM,
    DEFAULT_WARMUP_FRACTION,
    DEFAULT_WEIGHT_DECAY,
    DEFAULT_WEIGHT_DECAY_OFF_FRACTION,
)

RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"


@dataclass
class ModelArguments:
    model: str = field(metadata={"help": "Suite model to train, e.g. TriLM_99M or FloatLM_1.1B."})
    tiny: bool = field(
        default=False,
        metadata={"help": "Scaled-down architecture (2 layers, hidden 64; keeps the scale-shard count)."},
    )
    model_path: str | None = field(
        default=None,
        metadata={"help": "Start from this from_pretrained directory instead of a fresh initialization."},
    )
    tokenizer: str = field(default=DEFAULT_TOKENIZER, metadata={"help": "Tokenizer: Hub name or local directory."})
    fsdp_size: int = field(
        default=1,
        metadata={"help": "FSDP2 degree through transformers' DistributedConfig (needs model_path)."},
    )
    tp_size: int = field(
        default=1,
        metadata={
            "help": "Tensor-parallel degree through transformers' tp_plan / DistributedConfig (needs model_path)."
        },
    )


@dataclass
class DataArguments:
    data_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local .txt/.json/.jsonl/.parquet/.csv files (a document per line/row); wins over dataset_name."
        },
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` Hub dataset name."})
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    text_column: str = field(default="text", metadata={"help": "Column holding the documents."})
    streaming: bool = field(default=False, metadata={"help": "Stream the corpus instead of preparing it on disk."})
    block_size: int = field(default=2048, metadata={"help": "Tokens per training sequence (packed)."})


@dataclass
class SpectraTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's defaults and schedule, the global batch and suite exports.

    `learning_rate` is the (first-half) peak. Unpublished values default to documented assumptions (see
    `spectra_hf.training.schedules`).
    """

    learning_rate: float = field(default=2.4e-3, metadata={"help": "Peak learning rate (TriLM: first half)."})
    lr_after_drop: float | None = field(
        default=None, metadata={"help": "TriLM: peak learning rate after the drop (None: no drop)."}
    )
    lr_drop_fraction: float = field(
        default=DEFAULT_LR_DROP_FRACTION, metadata={"help": "TriLM: fraction of training at which the peak drops."}
    )
    weight_decay_off_fraction: float = field(
        default=DEFAULT_WEIGHT_DECAY_OFF_FRACTION,
        metadata={"help": "TriLM: fraction of training from which weight decay is 0."},
    )
    final_lr_ratio: float = field(
        default=DEFAULT_FINAL_LR_RATIO, metadata={"help": "Final LR as a fraction of the peak in force (assumption)."}
    )
    schedule: str | None = field(
        default=None,
        metadata={"help": "'trilm' (linear, drop, WD off) or 'floatlm' (cosine); default: from the model type."},
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={"help": "Sequences per optimizer step over all processes; sets gradient_accumulation_steps."},
    )
    suite_dir: str | None = field(
        default=None,
        metadata={"help": "Suite directory that receives release exports (spectra_hf.checkpoints.exports layout)."},
    )
    export_name: str | None = field(
        default=None, metadata={"help": "Name of the exports in suite_dir (default: the model name)."}
    )
    checkpoint_spacing: str = field(
        default="steps",
        metadata={"help": "'steps': every save_steps; 'log': also at steps 1, 2, 4, ..., 512 (Pythia's spacing)."},
    )
    ternary_stats: bool = field(
        default=True, metadata={"help": "Log zero fraction, mean scale and flipped digits of ternary layers."}
    )
    include_num_input_tokens_seen: str = field(
        default="all", metadata={"help": "Count training tokens (the exports record tokens_seen)."}
    )
    weight_decay: float = field(default=DEFAULT_WEIGHT_DECAY, metadata={"help": "Weight decay (assumption)."})
    warmup_steps: float = field(
        default=DEFAULT_WARMUP_FRACTION, metadata={"help": "Warmup steps, or a fraction of training if < 1."}
    )
    adam_beta1: float = field(default=ADAM_BETAS[0], metadata={"help": "AdamW beta1 (published)."})
    adam_beta2: float = field(default=ADAM_BETAS[1], metadata={"help": "AdamW beta2 (published)."})
    adam_epsilon: float = field(default=DEFAULT_ADAM_EPSILON, metadata={"help": "AdamW epsilon (assumption)."})
    max_grad_norm: float = field(default=DEFAULT_MAX_GRAD_NORM, metadata={"help": "Gradient clipping (assumption)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in (None, "trilm", "floatlm"):
            raise ConfigError(f"schedule must be 'trilm' or 'floatlm', got {self.schedule!r}")
        if self.checkpoint_spacing not in ("steps", "log"):
            raise ConfigError(f"checkpoint_spacing must be 'steps' or 'log', got {self.checkpoint_spacing!r}")


RecipeArguments = tuple[ModelArguments, DataArguments, SpectraTrainingArguments]
_DATACLASSES = (ModelArguments, DataArguments, SpectraTrainingArguments)


def recipe_keys() -> set[str]:
    """Every key a recipe may set."""
    return {f.name for dataclass_type in _DATACLASSES for f in fields(dataclass_type) if f.init}


def recipe_parser() -> HfArgumentParser:
    """The parser of every recipe key (`parse_recipe` parses with it; `spectra-hf train --help` prints it)."""
    # transformers annotates dataclass_types with a NewType over Any that no class is an instance of
    return HfArgumentParser(_DATACLASSES)  # type: ignore[arg-type]


def recipe_path(recipe: str | Path) -> Path:
    """A recipe file: a path, or a suite model name for the bundled recipe (`TriLM_99M` -> recipes/TriLM_99M.yaml)."""
    path = Path(recipe)
    if path.is_file():
        return path
    bundled = RECIPES_DIR / f"{recipe}.yaml"
    if bundled.is_file():
        return bundled
    raise ConfigError(
        f"recipe {recipe!r} not found: give a YAML file or a suite model name with a bundled recipe "
        f"({', '.join(sorted(p.stem for p in RECIPES_DIR.glob('*.yaml')))})"
    )


def read_recipe(recipe: str | Path) -> dict[str, Any]:
    """The recipe's key/value mapping, with unknown keys rejected."""
    import yaml

    path = recipe_path(recipe)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe {path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {path} must be a mapping of argument names to values")
    check_keys(values, where=f"recipe {path}")
    return values


def check_keys(values: Mapping[str, Any], *, where: str) -> None:
    known = recipe_keys()
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; `spectra-hf train RECIPE --help` lists the keys"
            raise ConfigError(f"unknown key {key!r} in {where}{hint}")


def _as_argv(values: Mapping[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(str(item) for item in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value).lower() if isinstance(value, bool) else str(value))
    return argv


def parse_recipe(
    recipe: str | Path | Mapping[str, Any],
    overrides: Mapping[str, Any] | Sequence[str] = (),
    *,
    defaults: Mapping[str, Any] | None = None,
) -> RecipeArguments:
    """Parse a recipe (file, bundled name or mapping), then `defaults` under it and `overrides` over it.

    Args:
        recipe: a YAML path, a suite model name with a bundled recipe, or the mapping itself.
        overrides: `{"max_steps": 10}` or command-line strings `["--max_steps", "10"]`.
        defaults: values the recipe and overrides may replace (e.g. `use_cpu` on a machine without GPU).
    """
    if isinstance(recipe, Mapping):
        check_keys(recipe, where="the recipe")
        values = dict(recipe)
    else:
        values = read_recipe(recipe)
    if isinstance(overrides, Mapping):
        check_keys(overrides, where="the overrides")
        override_argv = _as_argv(overrides)
    else:
        override_argv = list(overrides)
    argv = _as_argv(defaults or {}) + _as_argv(values) + override_argv
    parser = recipe_parser()
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True, look_for_args_file=False
        )
    except SystemExit as error:  # argparse already printed the reason
        raise ConfigError(f"invalid recipe value or override (see the message above): {argv}") from error
    if remaining:
        raise ConfigError(f"unknown override(s) {remaining}; `spectra-hf train RECIPE --help` lists the keys")
    model_args, data_args, training_args = parsed
    return model_args, data_args, training_args
