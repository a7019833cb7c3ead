"""What a release export must carry for the people who load it: the settings generation expects.

Training leaves two settings that suit training and fail users of the exported model: `Trainer` sets
`config.use_cache` to `TrainingArguments.use_cache` (False by default), so the reloaded model's forward returns no
KV cache; and a tokenizer trained or loaded for training pads on the right, so batched `generate` on a
decoder-only model warns and continues from pad tokens. Exports are written inside `generation_ready`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def generation_ready(model: Any, tokenizer: Any | None) -> Iterator[None]:
    """Within the block, `model.config.use_cache` is True and `tokenizer.padding_side` is "left" (what
    `save_pretrained` then writes); both are restored afterwards, so training goes on as configured."""
    config = getattr(model, "config", None)
    saved_use_cache = getattr(config, "use_cache", None)
    saved_padding_side = getattr(tokenizer, "padding_side", None)
    # save_pretrained writes a tokenizer's init_kwargs, not its attributes: set both.
    tokenizer_init_kwargs = getattr(tokenizer, "init_kwargs", None)
    init_kwargs = tokenizer_init_kwargs if isinstance(tokenizer_init_kwargs, dict) else None
    saved_init_kwargs = dict(init_kwargs) if init_kwargs is not None else None
    if config is not None:
        config.use_cache = True
    if tokenizer is not None and saved_padding_side is not None:
        tokenizer.padding_side = "left"
        if init_kwargs is not None:
            init_kwargs["padding_side"] = "left"
    try:
        yield
    finally:
        if config is not None:
            config.use_cache = saved_use_cache
        if tokenizer is not None and saved_padding_side is not None:
            tokenizer.padding_side = saved_padding_side
            if init_kwargs is not None and saved_init_kwargs is not None:
                init_kwargs.clear()
                init_kwargs.update(saved_init_kwargs)
