"""Synthetic original-release TriLM checkpoints for the conversion tests (not a test module).

Built with transformers' own LlamaForCausalLM, as SpectraSuite/TriLM_*_Unpacked are: fp16 weights g_s * T with one
magnitude per scale shard (q, k, v of a shard share it, as the fused QKV matrix did) and
`pretraining_model_parallel` in config.json.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spectra_hf.modeling.configuration_trilm import without_trilm_keys
from spectra_hf.suite import config_kwargs

# (path, shard dim): column-parallel layers shard output rows, row-parallel layers input columns.
LAYOUT = (
    ("self_attn.q_proj", 0), ("self_attn.k_proj", 0), ("self_attn.v_proj", 0), ("self_attn.o_proj", 1),
    ("mlp.gate_proj", 0), ("mlp.up_proj", 0), ("mlp.down_proj", 1),
)
SIZE_OF_MP = {1: "TriLM_99M", 2: "TriLM_1.1B", 3: "TriLM_2.4B", 6: "TriLM_3.9B"}


def release_model(mp: int, *, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A tiny fp16 LlamaForCausalLM holding release-format ternary weights with `mp` scale shards."""
    config = LlamaConfig(**without_trilm_keys(config_kwargs(SIZE_OF_MP[mp], tiny=True, **overrides)))
    config.pretraining_model_parallel = mp
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float16).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            qkv_scales = (torch.rand(mp) * 0.05 + 0.01).half()
            for path, dim in LAYOUT:
                weight = layer.get_submodule(path).weight
                digits = torch.randint(-1, 2, weight.shape, dtype=torch.float16)
                fused = path in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
                scales = qkv_scales if fused else (torch.rand(mp) * 0.05 + 0.01).half()
                per_index = scales.repeat_interleave(weight.shape[dim] // mp)
                weight.copy_(digits * (per_index[:, None] if dim == 0 else per_index[None, :]))
    return model
