"""A tiny stand-in suite directory: the 54 suite names, tiny models, a few checkpoints each (tests, bench, demos).

One tiny model is built and saved per distinct architecture (TriLM per scale-shard count, FloatLM); every export
copies its config, code and tokenizer files and writes its own random weights, so each repo and branch holds
different tensors at a fraction of the cost of 90 `save_pretrained` calls.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from spectra_hf.checkpoints.exports import ExportInfo, atomic_directory, checkpoint_dir, model_dir, write_export_info
from spectra_hf.suite import all_models, config_for

WEIGHTS_FILE = "model.safetensors"


def _template(directory: Path, name: str, *, vocab_size: int, tokenizer) -> dict[str, torch.Tensor]:
    """Save one tiny model of `name`'s architecture (QuantLMs: their FloatLM's) into `directory`; its state dict."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config_for(name, tiny=True, vocab_size=vocab_size))
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return {k: v.detach() for k, v in model.state_dict().items()}


def _write_export(
    target: Path, template: Path, state: dict[str, torch.Tensor], *, seed: int, info: ExportInfo
) -> None:
    """An export directory: the template's config, code and tokenizer files, fresh seeded weights, its info."""
    generator = torch.Generator().manual_seed(seed)
    weights = {k: (torch.randn(v.shape, generator=generator) * 0.02).to(v.dtype) for k, v in state.items()}
    with atomic_directory(target) as staging:
        for path in template.iterdir():
            if path.is_file() and path.name != WEIGHTS_FILE:
                shutil.copy2(path, staging / path.name)
        save_file(weights, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        write_export_info(staging, info)


def build_standin_suite(
    suite_dir: str | Path,
    *,
    steps: Sequence[int] = (100, 200),
    tokenizer=None,
    vocab_size: int = 512,
    models: Sequence[str] | None = None,
) -> Path:
    """Write a stand-in suite directory with the layout `spectra_hf.checkpoints.exports` describes.

    Args:
        suite_dir: where to write (created; existing exports are replaced).
        steps: optimizer steps of the intermediate checkpoints of every TriLM and FloatLM (QuantLMs have none).
        tokenizer: a tokenizer saved into every export (e.g. `spectra_hf.testing.corpus.train_tokenizer(...)`), or None.
        vocab_size: vocabulary of the tiny models (match the tokenizer).
        models: suite names to write (default: all 54).

    Returns:
        `suite_dir` as a Path. Weights differ between every export (seeded by its position), so a test can tell
        which repo and branch it downloaded.
    """
    suite_dir = Path(suite_dir)
    cache = suite_dir / ".standin-templates"
    templates: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    seed = 0
    for model in all_models():
        if models is not None and model.name not in models:
            continue
        trained = model.family != "quantlm"
        key = (model.family if model.family == "trilm" else "floatlm", model.spec.model_parallel if trained else 1)
        template = cache / f"{key[0]}-{key[1]}"
        if key not in templates:
            templates[key] = _template(
                template, model.base_model or model.name, vocab_size=vocab_size, tokenizer=tokenizer
            )
        # The final export first: writing it replaces the model directory, checkpoints included.
        final_step = max(steps, default=0) + 100
        for step in [None, *(steps if trained else ())]:
            seed += 1
            at = final_step if step is None else step
            info = ExportInfo(
                name=model.name,
                family=model.family,
                step=at if trained else None,
                tokens_seen=at * model.batch_tokens if trained else None,
                format="standin",
            )
            target = model_dir(suite_dir, model.name) if step is None else checkpoint_dir(suite_dir, model.name, step)
            _write_export(target, template, templates[key], seed=seed, info=info)
    shutil.rmtree(cache, ignore_errors=True)
    return suite_dir
