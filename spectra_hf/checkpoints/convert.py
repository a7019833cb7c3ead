"""Convert between the Spectra formats and the original release, streaming tensor by tensor.

    TriLM:   release (Llama, fp16 g_s * T) | latent | packed   -> packed | unpacked (release) | GGUF
    FloatLM: FloatLM | Llama                                   -> floatlm | unpacked (Llama) | GGUF

Outputs are written into a temporary sibling and renamed into place (never half-written). Memory stays bounded by
one output shard (`max_shard_bytes`) plus one decoder layer, so a 3.9B checkpoint never sits in memory twice.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig
from transformers.dynamic_module_utils import custom_object_save

from spectra_hf.checkpoints.io import INDEX_FILE, Checkpoint, ShardedWriter, Ternary, config_architecture
from spectra_hf.errors import SpectraError
from spectra_hf.checkpoints.exports import atomic_directory
from spectra_hf.modeling import FloatLMConfig, FloatLMForCausalLM, TriLMConfig, TriLMForCausalLM
from spectra_hf.modeling.packing import pack_ternary

TARGETS = ("packed", "unpacked", "floatlm", "gguf-tq1_0", "gguf-tq2_0", "gguf-f16")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_TERNARY_KEYS = ("ternary_eps", "ternary_fused_qkv_scale")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def default_target(kind: str) -> str:
    """What `convert SRC OUT` writes without `--to`: a release TriLM becomes packed; anything else must say."""
    if kind == "trilm-release":
        return "packed"
    raise SpectraError(f"a {kind} checkpoint needs an explicit --to (one of {', '.join(TARGETS)})")


def convert_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: str | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 2 << 30,
    progress: bool = True,
    allow_f16_fallback: bool = False,
    allow_no_tokenizer: bool = False,
) -> Path:
    """Convert the checkpoint directory `src` and write `out` (a directory, or a .gguf file for gguf targets).

    Args:
        to: one of TARGETS; default "packed" for an original TriLM release (see `default_target`).
        dtype: float dtype of the written float tensors ("float16", "bfloat16", "float32"); default: "float16"
            for "unpacked" (the release format), the source's dtypes otherwise (f16 in GGUF files).
        max_shard_bytes: largest safetensors shard written.
        progress: show a tqdm bar over tensors.
        allow_f16_fallback, allow_no_tokenizer: GGUF only, see `spectra_hf.checkpoints.gguf.write_gguf`.

    Returns the path written. Raises SpectraError for a source that is not convertible to `to`.
    """
    source = Checkpoint(src)
    to = to or default_target(source.kind)
    if to not in TARGETS:
        raise SpectraError(f"unknown conversion target {to!r}: choose one of {', '.join(TARGETS)}")
    if dtype is not None and dtype not in DTYPES:
        raise SpectraError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.resolve() == source.path.resolve():
        raise SpectraError(f"{out} is the source checkpoint: write the conversion to another path")
    cast = DTYPES[dtype] if dtype else (torch.float16 if to == "unpacked" else None)
    if to.startswith("gguf-"):
        from spectra_hf.checkpoints.gguf import write_gguf

        return write_gguf(
            source,
            out,
            qtype=to.removeprefix("gguf-"),
            progress=progress,
            allow_f16_fallback=allow_f16_fallback,
            allow_no_tokenizer=allow_no_tokenizer,
        )
    if to == "packed" and source.family != "trilm":
        raise SpectraError(f"{source.path} is a {source.kind} checkpoint, not a TriLM: only TriLMs pack (use --to floatlm)")
    if to == "floatlm" and source.family != "floatlm":
        raise SpectraError(f"{source.path} is a TriLM checkpoint: convert it --to packed or --to unpacked")
    with atomic_directory(out) as staging:
        writer = ShardedWriter(staging, max_shard_bytes=max_shard_bytes)
        names = source.names()
        for name in tqdm(names, desc=f"convert -> {to}", unit="tensor", disable=not progress):
            for out_name, tensor in _output_tensors(name, source.weight(name), to, cast):
                writer.add(out_name, tensor)
        writer.finish()
        _write_config(source, staging, to, cast)
        _copy_side_files(source.path, staging)
    return out


def _output_tensors(name: str, weight: torch.Tensor | Ternary, to: str, cast: torch.dtype | None):
    """The tensors that represent `weight` in format `to`."""
    if isinstance(weight, Ternary):
        if to == "packed":
            prefix = name.removesuffix(".weight")
            return [(f"{prefix}.weight_packed", pack_ternary(weight.digits)), (f"{prefix}.weight_scale", weight.scales)]
        return [(name, weight.dense(cast or torch.float16))]
    return [(name, weight.to(cast) if cast is not None and weight.is_floating_point() else weight)]


def _write_config(source: Checkpoint, directory: Path, to: str, cast: torch.dtype | None) -> None:
    """config.json for format `to` (plus the remote code for Spectra formats)."""
    architecture = config_architecture(source.config)
    dtype = str(cast).removeprefix("torch.") if cast is not None else architecture.pop("dtype", None)
    architecture.pop("dtype", None)
    architecture.pop("torch_dtype", None)
    if to == "packed":
        config = TriLMConfig(**architecture, weight_format="packed", dtype=dtype)
        model_class = TriLMForCausalLM
    elif to == "floatlm":
        config = FloatLMConfig(**{k: v for k, v in architecture.items() if k not in _TERNARY_KEYS}, dtype=dtype)
        model_class = FloatLMForCausalLM
    else:
        config = LlamaConfig(**{k: v for k, v in architecture.items() if k not in _TERNARY_KEYS}, dtype=dtype)
        config.architectures = ["LlamaForCausalLM"]
        if source.family == "trilm":
            config.pretraining_model_parallel = source.shards
        config.save_pretrained(directory)
        return
    config.architectures = [model_class.__name__]
    config.save_pretrained(directory)
    custom_object_save(model_class, directory)


def _copy_side_files(src: Path, directory: Path) -> None:
    """Tokenizer and generation files travel with the weights; weights, configs and remote code do not."""
    for path in src.iterdir():
        skip = path.suffix in _WEIGHT_SUFFIXES or path.suffix == ".py" or path.name in ("config.json", INDEX_FILE)
        if path.is_file() and not skip and not path.name.startswith("."):
            shutil.copy2(path, directory / path.name)
