"""GGUF export for llama.cpp (and transformers' GGUF loader): llama architecture, ternary matrices as TQ1_0 / TQ2_0.

TQ1_0 and TQ2_0 store blocks of 256 weights along a row, each with one fp16 absmax scale, so a ternary matrix
g_s * T survives exactly when every block lies inside one scale shard and g_s is an fp16 value (true for the
original release and for checkpoints converted from it). A row-parallel matrix (o, down) whose shard width is not a
multiple of 256, or a row length not a multiple of 256, is written as f16 instead, with a warning. Embeddings and the
LM head are f16, norms f32. q and k rows are permuted into llama.cpp's rotary layout (transformers undoes it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spectra_hf.checkpoints.io import Checkpoint, Ternary
from spectra_hf.errors import SpectraError
from spectra_hf.modeling.modeling_trilm import TERNARY_SHARD_DIM

logger = logging.getLogger(__name__)

QTYPES = ("tq1_0", "tq2_0", "f16")
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}


def gguf_name(name: str) -> str:
    """llama.cpp's name for the transformers Llama tensor `name`."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".")
    if parts[:2] != ["model", "layers"] or ".".join(parts[3:-1]) not in _LAYER_NAMES:
        raise SpectraError(f"tensor {name!r} has no llama GGUF name: is this a Llama-architecture checkpoint?")
    return f"blk.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:-1])]}.weight"


def _rotary_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order: within each head, interleave the two rotary halves."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tq_exact(name: str, shape: tuple[int, ...], shards: int) -> bool:
    """Whether every 256-weight block of a row of ternary tensor `name` lies inside one scale shard."""
    row = shape[1]
    shard_width = row // shards if TERNARY_SHARD_DIM[".".join(name.split(".")[3:-1])] == 1 else row
    return row % 256 == 0 and shard_width % 256 == 0


def write_gguf(source: Checkpoint, out: str | os.PathLike, *, qtype: str, progress: bool = True) -> Path:
    """Write `source` as one GGUF file at `out` ("tq1_0", "tq2_0" or "f16" for the ternary matrices).

    Streams tensor by tensor: tensor infos are planned from headers, then each tensor is read, quantized and
    written. The file appears under its name only when complete.
    """
    import gguf

    if qtype not in QTYPES:
        raise SpectraError(f"unknown GGUF type {qtype!r}: choose one of {', '.join(QTYPES)}")
    if qtype != "f16" and source.family != "trilm":
        raise SpectraError(f"{source.path} is not a TriLM: only ternary weights can be TQ1_0/TQ2_0 (use gguf-f16)")
    config = source.config
    ternary_type = {"tq1_0": gguf.GGMLQuantizationType.TQ1_0, "tq2_0": gguf.GGMLQuantizationType.TQ2_0}.get(qtype)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(staging, "llama")
    try:
        _add_metadata(writer, source, qtype)
        plan = []
        for name in source.names():
            shape = source.shape(name)
            raw = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else gguf.GGMLQuantizationType.F16
            if ternary_type is not None and source.is_ternary(name):
                if _tq_exact(name, shape, source.shards):
                    raw = ternary_type
                else:
                    logger.warning(
                        "%s: rows of %d weights do not split into 256-weight blocks inside one scale shard "
                        "(TQ needs that); written as f16", name, shape[1],
                    )
            byte_shape = gguf.quant_shape_to_byte_shape(shape, raw)
            writer.add_tensor_info(gguf_name(name), byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=raw)
            plan.append((name, raw))
        writer.write_header_to_file(staging)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, raw in tqdm(plan, desc=f"gguf {qtype}", unit="tensor", disable=not progress):
            writer.write_tensor_data(_encode(source, name, raw, config, gguf))
        writer.close()
        os.replace(staging, out)
    except BaseException:
        writer.close()
        staging.unlink(missing_ok=True)
        raise
    return out


def _encode(source: Checkpoint, name: str, raw, config: dict, gguf) -> np.ndarray:
    """The bytes of tensor `name` in GGUF type `raw`, rows permuted for q and k."""
    weight = source.weight(name)
    dense = weight.dense(torch.float32) if isinstance(weight, Ternary) else weight.float()
    heads = config["num_attention_heads"]
    if name.endswith("self_attn.q_proj.weight"):
        dense = _rotary_permute(dense, heads)
    elif name.endswith("self_attn.k_proj.weight"):
        dense = _rotary_permute(dense, config.get("num_key_value_heads") or heads)
    array = dense.numpy()
    if raw == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32).view(np.uint8)
    if raw == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16).view(np.uint8)
    return gguf.quants.quantize(array, raw)


def _add_metadata(writer, source: Checkpoint, qtype: str) -> None:
    import gguf

    config = source.config
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    writer.add_name(source.path.name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(config["vocab_size"])
    file_types = {"tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0, "tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0,
                  "f16": gguf.LlamaFileType.MOSTLY_F16}
    writer.add_file_type(int(file_types[qtype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokenizer_file = source.path / "tokenizer.json"
    if tokenizer_file.is_file():
        _add_tokenizer(writer, tokenizer_file, config)


def _add_tokenizer(writer, tokenizer_file: Path, config: dict) -> None:
    """Byte-level BPE metadata (llama.cpp's "gpt2" tokenizer model), padded to the model's vocabulary size."""
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE":
        logger.warning("%s is not a BPE tokenizer; the GGUF file carries no tokenizer", tokenizer_file)
        return
    vocab = dict(model["vocab"])
    special = {token["content"]: token["id"] for token in data.get("added_tokens", [])}
    vocab.update(special)
    size = max(config["vocab_size"], max(vocab.values()) + 1)
    tokens = [f"[PAD{index}]" for index in range(size)]
    types = [5] * size  # UNUSED
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = 3 if token in special else 1  # CONTROL or NORMAL
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id)):
        if isinstance(config.get(key), int):
            add(config[key])
