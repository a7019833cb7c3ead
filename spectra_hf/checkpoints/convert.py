"""Convert between the Spectra formats and the original release, streaming tensor by tensor.

    TriLM:   release (Llama, fp16 g_s * T) | latent | packed   -> packed | unpacked (release) | GGUF
    FloatLM: FloatLM | Llama                                   -> floatlm | unpacked (Llama) | GGUF

Nothing is lost: the source is checked complete and consistent before any work (`Checkpoint`); an output that equals,
contains or lies inside the source is refused, and so is a non-empty output directory that is not an earlier
conversion of the same kind (`--overwrite` replaces one of those, and only those). Outputs are written into a staging
sibling and renamed into place (never half-written; an interrupted run's staging folder is refused by every loader
and removed by the next run, see `staging`). Memory stays bounded by one output shard (`max_shard_bytes`) plus one
decoder layer, so a 3.9B checkpoint never sits in memory twice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig
from transformers.dynamic_module_utils import custom_object_save

from spectra_hf.checkpoints.io import INDEX_FILE, Checkpoint, ShardedWriter, Ternary, config_architecture
from spectra_hf.checkpoints.staging import staged_directory
from spectra_hf.errors import CheckpointError, ConfigError, OutputExistsError
from spectra_hf.modeling import FloatLMConfig, FloatLMForCausalLM, TriLMConfig, TriLMForCausalLM
from spectra_hf.modeling.checkpoint_checks import INCOMPLETE_MARKER
from spectra_hf.modeling.configuration_trilm import without_trilm_keys
from spectra_hf.modeling.packing import pack_ternary

TARGETS = ("packed", "unpacked", "floatlm", "gguf-tq1_0", "gguf-tq2_0", "gguf-f16")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Written into every output directory: what wrote it, so that only an earlier output of the same kind is replaced.
OUTPUT_RECORD = ".spectra-convert.json"


def default_target(kind: str) -> str:
    """What `convert SRC OUT` writes without `--to`: a release TriLM becomes packed; anything else must say."""
    if kind == "trilm-release":
        return "packed"
    raise ConfigError(f"a {kind} checkpoint needs an explicit --to (one of {', '.join(TARGETS)})")


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
    overwrite: bool = False,
) -> Path:
    """Convert the checkpoint directory `src` and write `out` (a directory, or a .gguf file for gguf targets).

    Args:
        to: one of TARGETS; default "packed" for an original TriLM release (see `default_target`).
        dtype: float dtype of the written float tensors ("float16", "bfloat16", "float32"); default: "float16"
            for "unpacked" (the release format), the source's dtypes otherwise (f16 in GGUF files).
        max_shard_bytes: largest safetensors shard written.
        progress: show a tqdm bar over tensors.
        allow_f16_fallback, allow_no_tokenizer: GGUF only, see `spectra_hf.checkpoints.gguf.write_gguf`.
        overwrite: replace `out` if it is an earlier output of this same conversion target (nothing else is ever
            replaced: see `check_output`).

    Returns the path written. Raises CheckpointError for an incomplete or inconsistent source, OutputExistsError for
    an `out` that would lose data, SpectraError for a source that is not convertible to `to`.
    """
    source = Checkpoint(src)
    to = to or default_target(source.kind)
    if to not in TARGETS:
        raise ConfigError(f"unknown conversion target {to!r}: choose one of {', '.join(TARGETS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if to == "packed" and source.family != "trilm":
        raise ConfigError(
            f"{source.path} is a {source.kind} checkpoint, not a TriLM: only TriLMs pack (use --to floatlm)"
        )
    if to == "floatlm" and source.family != "floatlm":
        raise ConfigError(f"{source.path} is a TriLM checkpoint: convert it --to packed or --to unpacked")
    out = Path(out)
    replace = check_output(out, source=source.path, to=to, overwrite=overwrite)
    check_side_files(source.path)
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
    with staged_directory(Path(os.path.abspath(out)), replace=replace) as staging:  # "x/.." named by its own name
        with ShardedWriter(staging, max_shard_bytes=max_shard_bytes) as writer:
            names = source.names()
            for name in tqdm(names, desc=f"convert -> {to}", unit="tensor", disable=not progress):
                for out_name, tensor in _output_tensors(name, source.weight(name), to, cast):
                    writer.add(out_name, tensor)
            writer.finish()
        copy_side_files(source.path, staging)
        # config.json last: until the very end the staging folder is not a checkpoint even to loaders that do not
        # know the marker (stock transformers), and from then on it is complete.
        _write_config(source, staging, to, cast)
        written = sorted(path.name for path in staging.iterdir() if path.name != INCOMPLETE_MARKER)
        record = {"format": to, "source": str(source.path.resolve()), "files": written}
        (staging / OUTPUT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out


def _previous_output_format(directory: Path) -> str | None:
    """The target of the earlier conversion that wrote `directory` and nothing else, or None: no record, or files
    the record does not list (the user's own, which replacing the directory would delete)."""
    try:
        record = json.loads((directory / OUTPUT_RECORD).read_text(encoding="utf-8"))
        listed = set(record["files"]) | {OUTPUT_RECORD, INCOMPLETE_MARKER}
        return record["format"] if {path.name for path in directory.iterdir()} <= listed else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _gguf_file_format(path: Path) -> str | None:
    """The conversion target ("gguf-tq1_0", ...) a GGUF file at `path` was written as, or None if it is not one."""
    try:
        import gguf

        field = gguf.GGUFReader(path).get_field("general.file_type")
        if field is None:
            return None
        file_type = gguf.LlamaFileType(int(field.contents()))
    except Exception:  # anything unreadable is not a GGUF file we wrote
        return None
    return f"gguf-{file_type.name.removeprefix('MOSTLY_').lower()}"


def check_output(out: Path, *, source: Path, to: str, overwrite: bool) -> bool:
    """Refuse an output path that would lose data; return whether `out` exists and is to be replaced.

    Refused: `out` equal to the source, containing it, or inside it; a non-empty `out` that is not an earlier output
    of this same target (an OUTPUT_RECORD listing all its files, or a GGUF file of that type); and an earlier output
    of the same target unless `overwrite`. An empty directory is written into.
    """
    source, resolved = source.resolve(), out.resolve()
    if resolved == source or resolved in source.parents:
        raise OutputExistsError(
            f"{out} {'is' if resolved == source else 'contains'} the source checkpoint {source}: writing there would "
            "delete it; write the conversion to a new directory"
        )
    if source in resolved.parents:
        raise OutputExistsError(
            f"{out} lies inside the source checkpoint {source}: the output would become part of it; write the "
            "conversion next to it instead"
        )
    if not out.exists() and not out.is_symlink():
        return False
    if to.startswith("gguf-"):
        found = _gguf_file_format(out) if out.is_file() else None
        what = f"a {found} file" if found else ("a directory" if out.is_dir() else "not a GGUF file this command wrote")
    elif out.is_dir() and not out.is_symlink():
        if not any(out.iterdir()):
            return False
        found = _previous_output_format(out)
        listing = ", ".join(sorted(path.name for path in out.iterdir())[:5])
        what = f"an earlier 'convert --to {found}' output" if found else f"not a convert output (it holds {listing})"
    else:
        found, what = None, "not a directory"
    if found != to:
        raise OutputExistsError(
            f"{out} exists and is {what}, not an earlier 'convert --to {to}' output: refusing to replace it; choose a "
            "new or empty output path (nothing was written)"
        )
    if not overwrite:
        raise OutputExistsError(f"{out} holds an earlier 'convert --to {to}' output: pass --overwrite to replace it")
    return True


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
        config = FloatLMConfig(**without_trilm_keys(architecture), dtype=dtype)
        model_class = FloatLMForCausalLM
    else:
        config = LlamaConfig(**without_trilm_keys(architecture), dtype=dtype)
        config.architectures = ["LlamaForCausalLM"]
        if source.family == "trilm":
            config.pretraining_model_parallel = source.shards
        config.save_pretrained(directory)
        return
    config.architectures = [model_class.__name__]
    custom_object_save(model_class, directory)  # the remote code first, config.json last
    config.save_pretrained(directory)


def side_files(src: Path) -> list[Path]:
    """Tokenizer and generation files, which travel with the weights; weights, configs and remote code do not."""
    found = []
    for path in sorted(src.iterdir()):
        skip = path.suffix in _WEIGHT_SUFFIXES or path.suffix == ".py" or path.name in ("config.json", INDEX_FILE)
        if path.is_file() and not skip and not path.name.startswith("."):
            found.append(path)
    return found


def check_side_files(src: Path) -> None:
    """CheckpointError naming the first side file a loader would fail to parse: any *.json that is not a JSON
    object, and a tokenizer.json that the `tokenizers` library cannot load. Run before any output is written, so a
    garbage tokenizer is never copied into a conversion (and from there published)."""
    for path in side_files(src):
        if path.suffix != ".json":
            continue
        cause: Exception | None = None
        try:
            parsed = json.loads(path.read_text(encoding="utf-8"))
            reason = "" if isinstance(parsed, dict) else f"a JSON {type(parsed).__name__}, not an object"
            if not reason and path.name == "tokenizer.json":
                from tokenizers import Tokenizer

                Tokenizer.from_file(str(path))
        except Exception as error:  # json: ValueError; tokenizers: a bare Exception
            cause, reason = error, " ".join(str(error).split())[:200]
        if reason:
            raise CheckpointError(
                f"{path} is not a readable {path.name} ({reason}): loaders of the converted model would fail on it; "
                "restore it from the model's source (or remove it to convert the weights alone)"
            ) from cause


def copy_side_files(src: Path, directory: Path) -> None:
    """Copy the side files (`side_files`) of `src` into `directory`."""
    for path in side_files(src):
        shutil.copy2(path, directory / path.name)
