"""GGUF export for llama.cpp (and transformers' GGUF loader): llama architecture, ternary matrices as TQ1_0 / TQ2_0.

TQ1_0 and TQ2_0 store blocks of 256 weights along a row, each with one fp16 absmax scale, so a ternary matrix
g_s * T survives exactly when every block lies inside one scale shard and g_s is an fp16 value (true for the
original release and for checkpoints converted from it). A row-parallel matrix (o, down) whose shard width is not a
multiple of 256, or a row length not a multiple of 256, cannot be TQ: the export refuses such a model unless the caller
allows those matrices as f16 (`allow_f16_fallback`). Embeddings and the LM head are f16, norms f32. q and k rows are
permuted into llama.cpp's rotary layout (transformers undoes it).

llama.cpp refuses a file without tokenizer keys, and tokenizes with the pre-tokenizer named by `tokenizer.ggml.pre`
(its regexes, not the ones of tokenizer.json): the export reads tokenizer.json beside the model, maps a byte-level BPE
with GPT-2 splitting to "gpt-2", and refuses a tokenizer it cannot map or a missing one (unless
`allow_no_tokenizer`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from spectra_hf.checkpoints.io import Checkpoint, Ternary
from spectra_hf.errors import CheckpointError, ConfigError
from spectra_hf.modeling.modeling_trilm import TERNARY_SHARD_DIM

logger = logging.get_logger(__name__)

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
        raise CheckpointError(f"tensor {name!r} has no llama GGUF name: is this a Llama-architecture checkpoint?")
    return f"blk.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:-1])]}.weight"


def _rotary_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order: within each head, interleave the two rotary halves."""
    halves = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return halves.swapaxes(1, 2).reshape(weight.shape)


def _row_parallel(name: str) -> bool:
    """Whether ternary tensor `name` is sharded along its rows' length (o, down: input columns)."""
    return TERNARY_SHARD_DIM[".".join(name.split(".")[3:-1])] == 1


def _tq_exact(name: str, shape: tuple[int, ...], shards: int) -> bool:
    """Whether every 256-weight block of a row of ternary tensor `name` lies inside one scale shard."""
    row = shape[1]
    shard_width = row // shards if _row_parallel(name) else row
    return row % 256 == 0 and shard_width % 256 == 0


def write_gguf(
    source: Checkpoint,
    out: str | os.PathLike,
    *,
    qtype: str,
    progress: bool = True,
    allow_f16_fallback: bool = False,
    allow_no_tokenizer: bool = False,
) -> Path:
    """Write `source` as one GGUF file at `out` ("tq1_0", "tq2_0" or "f16" for the ternary matrices).

    Args:
        allow_f16_fallback: write ternary matrices that TQ blocks cannot hold exactly as f16 (one warning) instead
            of refusing the model.
        allow_no_tokenizer: write a file without tokenizer keys when there is no tokenizer.json beside the model
            (llama.cpp refuses such a file; transformers' GGUF loader and gguf-py read it).

    Everything that can refuse is checked before a byte is written. Streams tensor by tensor: tensor infos are
    planned from headers, then each tensor is read, quantized and written. The file appears under its name only
    when complete.
    """
    import gguf

    if qtype not in QTYPES:
        raise ConfigError(f"unknown GGUF type {qtype!r}: choose one of {', '.join(QTYPES)}")
    if qtype != "f16" and source.family != "trilm":
        raise ConfigError(f"{source.path} is not a TriLM: only ternary weights can be TQ1_0/TQ2_0 (use gguf-f16)")
    config = source.config
    tokenizer = gguf_tokenizer(source.path, config=config, allow_missing=allow_no_tokenizer)
    ternary_type = {"tq1_0": gguf.GGMLQuantizationType.TQ1_0, "tq2_0": gguf.GGMLQuantizationType.TQ2_0}.get(qtype)
    plan = []
    fallback = []
    for name in source.names():
        shape = source.shape(name)
        raw = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else gguf.GGMLQuantizationType.F16
        if ternary_type is not None and source.is_ternary(name):
            if _tq_exact(name, shape, source.shards):
                raw = ternary_type
            else:
                fallback.append(name)
        plan.append((name, shape, raw))
    if fallback:
        _refuse_or_warn_fallback(source, qtype, fallback, allowed=allow_f16_fallback)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(staging, "llama")
    try:
        _add_metadata(writer, source, qtype)
        if tokenizer is not None:
            tokenizer.write_to(writer)
        for name, shape, raw in plan:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, raw)
            writer.add_tensor_info(
                gguf_name(name), byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=raw
            )
        writer.write_header_to_file(staging)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, _, raw in tqdm(plan, desc=f"gguf {qtype}", unit="tensor", disable=not progress):
            writer.write_tensor_data(_encode(source, name, raw, config, gguf))
        writer.close()
        os.replace(staging, out)
    except BaseException:
        writer.close()
        staging.unlink(missing_ok=True)
        raise
    return out


def _refuse_or_warn_fallback(source: Checkpoint, qtype: str, fallback: list[str], *, allowed: bool) -> None:
    """One line for the ternary matrices TQ blocks cannot hold: an error, or (allowed) a warning."""
    ternary = sum(source.is_ternary(name) for name in source.names())
    widths = sorted({source.shape(name)[1] // (source.shards if _row_parallel(name) else 1) for name in fallback})
    what = (
        f"{len(fallback)} of {ternary} ternary matrices of {source.path} cannot be {qtype.upper()} (rows or scale "
        f"shards of {', '.join(map(str, widths))} weights do not split into the 256-weight blocks TQ needs)"
    )
    if not allowed:
        none = " - the file would hold no ternary tensor at all" if len(fallback) == ternary else ""
        raise ConfigError(
            f"{what}{none}: pass --allow-f16-fallback to write them as f16, or convert --to gguf-f16"
        )
    logger.warning("%s: written as f16 (--allow-f16-fallback)", what)


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


# GPT-2's split regex, as tokenizers' ByteLevel(use_regex=True) applies it and as a tokenizer.json `Split` spells it
# (with or without the final `|\s+`, which only matters for text no other branch takes).
_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_GPT2_PATTERNS = (_GPT2_PATTERN, _GPT2_PATTERN + r"|\s+")
# Normalizers llama.cpp's byte-level BPE path has no counterpart for but that change no text the export must match:
# none, and NFC (GPT-NeoX-20B's, the suite's tokenizer: text already in NFC, as nearly all text is, is unchanged).
_ACCEPTED_NORMALIZERS = (None, "NFC")
# llama.cpp's token types (llama_token_type / gguf.TokenType).
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class GGUFTokenizer:
    """The tokenizer keys of a GGUF file (llama.cpp's "gpt2" byte-level BPE), padded to the model's vocabulary."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    add_bos: bool
    add_eos: bool
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None

    def write_to(self, writer: Any) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        for value, add in ((self.bos_id, writer.add_bos_token_id), (self.eos_id, writer.add_eos_token_id),
                           (self.pad_id, writer.add_pad_token_id)):
            if value is not None:
                add(value)


def llama_cpp_pre_tokenizer(tokenizer_json: dict[str, Any], *, source: str) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for the splitting of a tokenizer.json, or ConfigError.

    Mapped: ByteLevel with GPT-2's regex and no prefix space, alone or as Split(GPT-2 regex) + ByteLevel(no regex):
    "gpt-2". llama.cpp applies its own regexes for the name it reads, so anything else would tokenize differently.
    """
    def refuse(what: str) -> ConfigError:
        return ConfigError(
            f"{source}: {what} has no llama.cpp pre-tokenizer spectra-hf can name (it maps byte-level BPE with GPT-2 "
            "splitting to 'gpt-2'); convert with llama.cpp's convert_hf_to_gguf.py, or pass --no-tokenizer"
        )

    normalizer = tokenizer_json.get("normalizer")
    normalizer_type = normalizer.get("type") if isinstance(normalizer, dict) else None
    if normalizer_type not in _ACCEPTED_NORMALIZERS:
        raise refuse(f"the {normalizer_type} normalizer")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"]:
        (byte_level,) = steps
        if byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space", False):
            return "gpt-2"
    elif kinds == ["Split", "ByteLevel"]:
        split, byte_level = steps
        pattern = (split.get("pattern") or {}).get("Regex")
        if (
            pattern in _GPT2_PATTERNS
            and split.get("behavior") == "Isolated"
            and not split.get("invert", False)
            and not byte_level.get("use_regex", True)
            and not byte_level.get("add_prefix_space", False)
        ):
            return "gpt-2"
    described = " + ".join(
        f"{step.get('type')}({', '.join(f'{k}={v!r}' for k, v in sorted(step.items()) if k != 'type')})"
        for step in steps
    )
    raise refuse(f"the pre-tokenizer {described or 'none'}")


def gguf_tokenizer(
    directory: Path, *, config: dict[str, Any], allow_missing: bool = False
) -> GGUFTokenizer | None:
    """The tokenizer keys for the model in `directory` (whose config.json is `config`), from its tokenizer.json
    (and the pad token of tokenizer_config.json).

    Raises CheckpointError without tokenizer.json (None when `allow_missing`), ConfigError for a tokenizer llama.cpp
    would not reproduce (not byte-level BPE, a pre-tokenizer or normalizer it has no name for).
    """
    from tokenizers import Tokenizer

    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        if allow_missing:
            logger.warning(
                "%s has no tokenizer.json: the GGUF file carries no tokenizer (llama.cpp refuses it)", directory
            )
            return None
        raise CheckpointError(
            f"{directory} has no tokenizer.json, and llama.cpp refuses a GGUF file without tokenizer keys (\"key not "
            "found in model: tokenizer.ggml.model\"): save the model's tokenizer there (tokenizer.save_pretrained), "
            "or pass --no-tokenizer for tools that bring their own"
        )
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        fallback = " with byte fallback" if model.get("byte_fallback") else ""
        raise ConfigError(
            f"{tokenizer_file}: a {model.get('type')} tokenizer{fallback} "
            "is not the byte-level BPE this export writes: convert with llama.cpp's convert_hf_to_gguf.py, or pass "
            "--no-tokenizer"
        )
    pre = llama_cpp_pre_tokenizer(data, source=str(tokenizer_file))
    vocab = dict(model["vocab"])
    added = {token["content"]: token for token in data.get("added_tokens", [])}
    vocab.update({content: token["id"] for content, token in added.items()})
    size = max(config["vocab_size"], max(vocab.values()) + 1)
    tokens = [f"[PAD{index}]" for index in range(size)]
    types = [_UNUSED] * size
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = (_CONTROL if added[token].get("special") else _USER_DEFINED) if token in added else _NORMAL
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    # What the transformers tokenizer adds around a text is what its post-processor adds: ask it.
    runtime = Tokenizer.from_str(tokenizer_file.read_text(encoding="utf-8"))
    plain, special = runtime.encode("a", add_special_tokens=False).ids, runtime.encode("a").ids
    start = special.index(plain[0]) if plain and plain[0] in special else 0
    added_before, added_after = special[:start], special[start + len(plain):]
    bos_id = added_before[0] if added_before else config.get("bos_token_id")
    eos_id = added_after[-1] if added_after else config.get("eos_token_id")
    return GGUFTokenizer(
        tokens=tokens,
        token_types=types,
        merges=merges,
        pre=pre,
        add_bos=bool(added_before),
        add_eos=bool(added_after),
        bos_id=bos_id if isinstance(bos_id, int) else None,
        eos_id=eos_id if isinstance(eos_id, int) else None,
        pad_id=_pad_id(directory, vocab),
    )


def _pad_id(directory: Path, vocab: dict[str, int]) -> int | None:
    config_file = directory / "tokenizer_config.json"
    pad = json.loads(config_file.read_text(encoding="utf-8")).get("pad_token") if config_file.is_file() else None
    if isinstance(pad, dict):
        pad = pad.get("content")
    return vocab.get(pad) if isinstance(pad, str) else None
