"""One switch for the fast decode route of `generate()`: a static KV cache and a torch.compile'd forward.

On a packed TriLM the compiled graph calls the 2-bit C++ operators directly (q/k/v and gate/up one call each), with
no Python per layer. transformers compiles the forward itself when the cache is static and a `compile_config`
allows the device; this sets both on the model's generation config, sizes the cache once (so later calls reuse the
graph instead of recompiling), and compiles by running one short generation, printing how long that took. Inductor
keeps what it compiled in its on-disk cache (`TORCHINDUCTOR_CACHE_DIR`), so a later process compiles faster.
"""

from __future__ import annotations

import time
from typing import Any, cast

import torch
from transformers import CompileConfig, PreTrainedModel
from transformers.utils import logging

logger = logging.get_logger(__name__)


def compile_for_decode(model: PreTrainedModel, *, max_cache_len: int = 256, verbose: bool = True) -> float:
    """Make `model.generate()` decode with a static cache of `max_cache_len` positions (prompt + new tokens) and a
    compiled forward (fullgraph, static shapes), compile it now, and return the compile time in seconds."""
    config = CompileConfig(fullgraph=True, dynamic=False)
    # transformers compiles on CPU only when asked (its own switch; typed None in CompileConfig)
    config._compile_all_devices = True  # type: ignore[assignment]
    model.generation_config.cache_implementation = "static"
    model.generation_config.max_cache_len = max_cache_len
    model.generation_config.compile_config = config
    device = next(model.parameters()).device
    prompt = torch.zeros(1, 2, dtype=torch.long, device=device)  # [batch 1, 2 tokens]
    started = time.perf_counter()
    generate = cast(Any, model).generate  # (PreTrainedModel types it as a tensor attribute; *ForCausalLM has it)
    with torch.no_grad():
        generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0)
    seconds = time.perf_counter() - started
    message = f"compiled the decode step in {seconds:.1f} s (static cache of {max_cache_len} positions)"
    if verbose:
        print(message)
    logger.info(message)
    return seconds
