"""Write `recipes/<name>.yaml` for the 18 trained suite models from the suite registry.

The registry is the only source of the published numbers (peak LRs, batch tokens, tokens, context); this module
only lays them out as recipe keys. Regenerate with `python -m spectra_hf.training.recipe_writer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spectra_hf.suite import CONTEXT_LENGTH, DATASET_ID, TOKENS, SuiteModel, all_models

from .arguments import DEFAULT_TOKENIZER, RECIPES_DIR
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

PER_DEVICE_BATCH = 4  # a hardware choice, not the paper's: override it; gradient accumulation follows

_HEADER = """\
# {name}: the paper's recipe (arXiv 2407.12327). Generated from spectra_hf.suite by
# `python -m spectra_hf.training.recipe_writer`: edit the registry, not these numbers.
# Published: learning rates, batch ({batch_tokens} tokens = global_batch_size x block_size), {tokens} tokens,
# AdamW betas, context. Assumptions (not published): weight_decay, warmup_steps (a fraction of max_steps),
# final_lr_ratio, adam_epsilon, max_grad_norm. Override any key: spectra-hf train {name} --max_steps 1000
"""


def trained_models() -> list[SuiteModel]:
    """The 18 models that are trained (TriLM and FloatLM at the nine sizes)."""
    return [model for model in all_models() if model.family != "quantlm"]


def recipe_for(model: SuiteModel) -> dict[str, Any]:
    """The recipe mapping of one trained suite model."""
    global_batch = model.batch_tokens // CONTEXT_LENGTH
    recipe: dict[str, Any] = {
        "model": model.name,
        "tokenizer": DEFAULT_TOKENIZER,
        "dataset_name": DATASET_ID,  # streamed
        "streaming": True,
        "block_size": CONTEXT_LENGTH,
        "global_batch_size": global_batch,
        "per_device_train_batch_size": PER_DEVICE_BATCH,
        "max_steps": TOKENS // model.batch_tokens,
        "schedule": model.family,
        "learning_rate": model.peak_lr,
    }
    if model.family == "trilm":
        recipe.update(
            lr_after_drop=model.spec.trilm_lr_after_drop,
            lr_drop_fraction=DEFAULT_LR_DROP_FRACTION,
            weight_decay_off_fraction=round(DEFAULT_WEIGHT_DECAY_OFF_FRACTION, 6),
        )
    recipe.update(
        weight_decay=DEFAULT_WEIGHT_DECAY,
        warmup_steps=DEFAULT_WARMUP_FRACTION,
        final_lr_ratio=DEFAULT_FINAL_LR_RATIO,
        adam_beta1=ADAM_BETAS[0],
        adam_beta2=ADAM_BETAS[1],
        adam_epsilon=DEFAULT_ADAM_EPSILON,
        max_grad_norm=DEFAULT_MAX_GRAD_NORM,
        logging_steps=10,
        save_steps=1000,
        checkpoint_spacing="log",
        output_dir=f"runs/{model.name}",
        suite_dir="suite",
        seed=1234,
    )
    return recipe


def write_recipes(out_dir: str | Path = RECIPES_DIR) -> list[Path]:
    """Write the 18 recipes into `out_dir`; returns their paths."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for model in trained_models():
        header = _HEADER.format(name=model.name, batch_tokens=model.batch_tokens, tokens=TOKENS)
        path = out / f"{model.name}.yaml"
        path.write_text(header + yaml.safe_dump(recipe_for(model), sort_keys=False), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_recipes():
        print(written)
