"""Checks that a checkpoint is complete, consistent and of the right kind before any loading work.

One implementation for every reader: `from_pretrained` of every Spectra class runs `check_local_checkpoint` (and
`check_model_class` on config.json), and spectra_hf's `convert` and `info` run the same functions (re-raised as its
CheckpointError). A problem ends in one OSError naming the file or tensor and the fix, never in transformers'
lower-level messages, a bare RuntimeError / KeyError, or a model built from uninitialized memory.

What is checked, from headers and config.json only (plus the few bytes of the packed scales):
  - the directory exists, holds config.json, is not an unfinished staging folder (`INCOMPLETE_MARKER`);
  - every safetensors file has a readable header whose tensors tile the data exactly (truncated or corrupt
    files are caught before anything is read);
  - every tensor the architecture in config.json implies is present with its shape and a fitting dtype: float
    weights float, packed ternary weights uint8 with ceil(out * in / 5) bytes, `weight_scale` float with one value
    per scale shard (`pretraining_model_parallel`);
  - packed scales are finite and not negative (an all-zero shard recovered from a release has scale 0).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, PretrainedConfig

from .configuration_floatlm import FloatLMConfig
from .configuration_trilm import TriLMConfig
from .packing import packed_size

# A staging folder carries this file until its content is complete and renamed into place: loaders refuse it.
INCOMPLETE_MARKER = ".spectra-incomplete"
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"

# Bytes per element of every safetensors dtype (the format's own list).
SAFETENSORS_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
_SCALE_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_FIX = "re-download it, or re-save / re-convert it from its source"

@dataclass(frozen=True)
class StoredTensor:
    """One tensor's entry in a safetensors header; `start` / `end` are absolute byte offsets in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class ExpectedTensor:
    """What config.json implies about one tensor: its shape and the safetensors dtypes that fit."""

    shape: tuple[int, ...]
    dtypes: frozenset[str]

    def describe(self) -> str:
        kinds = "float" if self.dtypes == FLOAT_DTYPES else "/".join(sorted(self.dtypes))
        return f"{kinds} {list(self.shape)}"


def read_safetensors_header(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """The tensors of safetensors file `path`, checked the way the format requires: a JSON object header, known
    dtypes, each tensor's byte range matching its shape and dtype, the ranges tiling the data exactly (a truncated
    or padded file is refused). OSError naming the file otherwise."""
    return read_safetensors_file_header(path)[0]


def read_safetensors_file_header(path: str | os.PathLike) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """`read_safetensors_header` plus the header's `__metadata__` (string keys and values; {} when absent)."""
    path = Path(path)

    def corrupt(reason: str) -> OSError:
        return OSError(f"corrupt checkpoint file {path} ({reason}): {_FIX}")

    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise corrupt("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            raise corrupt(f"header of {length} bytes in a file of {size}: truncated")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise corrupt(f"unreadable header: {error}") from error
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt("__metadata__ is not a JSON object of strings")
    data_start, data_length = 8 + length, size - 8 - length
    entries = {}
    for name, value in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = value["dtype"], value["shape"], value["data_offsets"]
            if not (isinstance(start, int) and isinstance(end, int) and all(isinstance(d, int) for d in shape)):
                raise TypeError("offsets and shape must be integers")
        except (KeyError, TypeError, ValueError) as error:
            raise corrupt(f"bad header entry for tensor {name!r}: {error}") from error
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise corrupt(f"tensor {name!r} has unknown dtype {dtype!r}")
        if any(d < 0 for d in shape) or not 0 <= start <= end:
            raise corrupt(f"tensor {name!r} has a negative shape or offset")
        if end - start != math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]:
            raise corrupt(f"tensor {name!r}: {end - start} bytes for shape {shape} of {dtype}")
        entries[name] = StoredTensor(dtype, tuple(shape), data_start + start, data_start + end)
    covered = 0
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if entry.start != data_start + covered:
            raise corrupt("tensor data overlaps or leaves gaps")
        covered = entry.end - data_start
    if covered != data_length:
        reason = "truncated: tensors lie past the end of the file" if covered > data_length else "trailing bytes"
        raise corrupt(reason)
    return entries, metadata


def read_stored_tensor(path: str | os.PathLike, entry: StoredTensor, dtype: torch.dtype) -> torch.Tensor:
    """One tensor's bytes read into its own memory as `dtype` (the caller maps `entry.dtype` to a torch dtype)."""
    buffer = bytearray(entry.end - entry.start)
    if buffer:
        with open(path, "rb") as handle:
            handle.seek(entry.start)
            if handle.readinto(buffer) != len(buffer):
                raise OSError(f"corrupt checkpoint file {path}: truncated tensor data; {_FIX}")
        return torch.frombuffer(buffer, dtype=dtype).reshape(entry.shape)
    return torch.zeros(entry.shape, dtype=dtype)


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files transformers would load from `directory`: the shards its index lists, else
    model.safetensors; [] when it has neither. OSError if the index is corrupt or a listed shard is missing."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = list(dict.fromkeys(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
            raise OSError(f"{index} is corrupt ({error!r}): {_FIX}") from error
        files = [directory / name for name in names]
        for file in files:
            if not file.is_file():
                raise OSError(
                    f"{file} is listed in {INDEX_FILE} but missing: the download or save is incomplete; {_FIX}"
                )
        return files
    single = directory / WEIGHTS_FILE
    return [single] if single.is_file() else []


def load_architecture(config_dict: Mapping[str, Any], *, where: str) -> PretrainedConfig:
    """The config object of a config.json dict ("trilm", "floatlm" or a Llama), with the class defaults that
    save_pretrained leaves out filled in. OSError naming `where` if its values are unusable."""
    config_classes: dict[str | None, type[LlamaConfig]] = {"trilm": TriLMConfig, "floatlm": FloatLMConfig}
    config_class = config_classes.get(config_dict.get("model_type"), LlamaConfig)
    try:
        config = config_class.from_dict(dict(config_dict))
    except (ValueError, TypeError, KeyError) as error:
        raise OSError(f"{where}/config.json is inconsistent: {error}; fix the value or {_FIX}") from error
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        value = getattr(config, key, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise OSError(f"{where}/config.json: {key} must be a positive integer, got {value!r}; {_FIX}")
    return config


def linear_shapes(config: PretrainedConfig | Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """[out, in] (the shape of `nn.Linear.weight`) of the seven linear layers of a decoder block, by path
    ("self_attn.q_proj", ..., "mlp.down_proj"). `config` is a config object or a config.json dict; `head_dim` and
    `num_key_value_heads` default as in Llama."""

    def value(key: str) -> Any:
        return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)

    hidden, inter, heads = value("hidden_size"), value("intermediate_size"), value("num_attention_heads")
    head_dim = value("head_dim") or hidden // heads
    kv_heads = value("num_key_value_heads") or heads
    return {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv_heads * head_dim, hidden),
        "self_attn.v_proj": (kv_heads * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }


def expected_tensors(config: PretrainedConfig) -> dict[str, ExpectedTensor]:
    """Every tensor a checkpoint with `config` must store (Llama names; packed TriLMs store each linear weight as
    `P.weight_packed` uint8 [ceil(out * in / 5)] and `P.weight_scale` float [pretraining_model_parallel])."""
    float_tensor = lambda *shape: ExpectedTensor(tuple(shape), FLOAT_DTYPES)  # noqa: E731
    vocab, hidden = config.vocab_size, config.hidden_size
    packed = config.model_type == "trilm" and config.weight_format == "packed"
    expected = {"model.embed_tokens.weight": float_tensor(vocab, hidden), "model.norm.weight": float_tensor(hidden)}
    if not getattr(config, "tie_word_embeddings", False):
        expected["lm_head.weight"] = float_tensor(vocab, hidden)
    shapes = linear_shapes(config)
    biased = {
        path: getattr(config, "attention_bias" if path.startswith("self_attn") else "mlp_bias", False)
        for path in shapes
    }
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        expected[f"{prefix}.input_layernorm.weight"] = float_tensor(hidden)
        expected[f"{prefix}.post_attention_layernorm.weight"] = float_tensor(hidden)
        for path, (out_features, in_features) in shapes.items():
            if packed:
                size = packed_size(out_features * in_features)
                expected[f"{prefix}.{path}.weight_packed"] = ExpectedTensor((size,), frozenset({"U8"}))
                expected[f"{prefix}.{path}.weight_scale"] = float_tensor(config.pretraining_model_parallel)
            else:
                expected[f"{prefix}.{path}.weight"] = float_tensor(out_features, in_features)
            if biased[path]:
                expected[f"{prefix}.{path}.bias"] = float_tensor(out_features)
    return expected


def check_stored_tensors(stored: Mapping[str, StoredTensor], config: PretrainedConfig, *, where: str) -> None:
    """OSError naming the first tensor that config.json expects and `stored` (name -> header entry) lacks, or holds
    with another shape or an unfitting dtype."""
    expected = expected_tensors(config)
    missing = [name for name in expected if name not in stored]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise OSError(
            f"{where} is incomplete: tensor {missing[0]} ({expected[missing[0]].describe()}) is missing{more}; {_FIX}"
        )
    for name, want in expected.items():
        entry = stored[name]
        if entry.shape != want.shape or entry.dtype not in want.dtypes:
            raise OSError(
                f"{where}: tensor {name} is {entry.dtype} {list(entry.shape)}, but config.json implies "
                f"{want.describe()}: the weights do not match config.json; {_FIX}"
            )


def check_scale_values(name: str, scales: torch.Tensor, *, where: str) -> None:
    """OSError naming tensor `name` if a ternary scale is NaN, infinite or negative."""
    bad = ~torch.isfinite(scales) | (scales < 0)
    if bool(bad.any()):
        value = scales.reshape(-1)[bad.reshape(-1)][0].item()
        raise OSError(
            f"{where}: tensor {name} holds the scale {value}; ternary scales must be finite and not negative: "
            f"the checkpoint is corrupt; {_FIX}"
        )


def check_packed_bytes(name: str, packed: torch.Tensor, *, where: str) -> None:
    """OSError naming tensor `name` if a packed byte is above 242 (not five base-3 digits)."""
    if packed.numel() and int(packed.max()) > 242:
        raise OSError(
            f"{where}: tensor {name} holds the byte {int(packed.max())}; packed ternary bytes are at most 242 "
            f"(five base-3 digits): the checkpoint is corrupt; {_FIX}"
        )


@dataclass
class CheckedCheckpoint:
    """A local checkpoint that passed every check: its config.json dict, the architecture it implies (None for a
    model type other than trilm / floatlm / llama), its safetensors files and their tensors (headers only)."""

    directory: Path
    config: dict[str, Any]
    architecture: PretrainedConfig | None
    files: list[Path]
    tensors: dict[str, StoredTensor]
    file_of: dict[str, Path]


def read_checkpoint_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a finished checkpoint directory (OSError naming the problem and the fix)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise OSError(
            f"no checkpoint at {directory}: the directory does not exist; pass a directory written by "
            "save_pretrained, or a Hub repo id such as 'SpectraSuite/TriLM_99M_Unpacked'"
        )
    if (directory / INCOMPLETE_MARKER).exists():
        raise OSError(
            f"{directory} is an unfinished output (it holds {INCOMPLETE_MARKER}: the conversion or save that wrote it "
            "was interrupted): run that command again"
        )
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise OSError(f"{directory} is not a checkpoint: config.json is missing (save the model with save_pretrained)")
    try:
        config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OSError(f"{config_path} is corrupt ({error}): {_FIX}") from error
    if not isinstance(config_dict, dict):
        raise OSError(f"{config_path} is corrupt (not a JSON object): {_FIX}")
    return config_dict


def inspect_checkpoint(directory: str | os.PathLike) -> CheckedCheckpoint:
    """Every check of the module docstring on a local checkpoint directory (OSError naming the problem and fix).

    Tensor checks run for Spectra and Llama model types stored as safetensors; other model types are left to their
    own loaders (`check_model_class` refuses them for the Spectra classes)."""
    directory = Path(directory)
    config_dict = read_checkpoint_config(directory)
    files = weight_files(directory)
    tensors: dict[str, StoredTensor] = {}
    file_of: dict[str, Path] = {}
    for file in files:
        entries = read_safetensors_header(file)
        tensors.update(entries)
        file_of.update(dict.fromkeys(entries, file))
    architecture = None
    if config_dict.get("model_type") in ("trilm", "floatlm", "llama"):
        architecture = load_architecture(config_dict, where=str(directory))
        if files:
            check_stored_tensors(tensors, architecture, where=str(directory))
            for name, entry in tensors.items():
                if name.endswith(".weight_scale") and entry.dtype in _SCALE_TORCH_DTYPES:
                    scales = read_stored_tensor(file_of[name], entry, _SCALE_TORCH_DTYPES[entry.dtype])
                    check_scale_values(name, scales, where=str(directory))
    return CheckedCheckpoint(directory, config_dict, architecture, files, tensors, file_of)


def _looks_local(path: str | os.PathLike) -> bool:
    text = os.fspath(path)
    return os.path.isabs(text) or text.startswith((".", "~")) or os.path.exists(text)


# Checking digests at load costs hashing the weights once (sha256, on up to 8 threads): see the README's "Ternary
# storage" section for its share of the load time.
VERIFY_DIGESTS_BY_DEFAULT = True


def check_local_checkpoint(path: str | os.PathLike, *, subfolder: str = "", verify_digests: bool = False) -> None:
    """`inspect_checkpoint` for a local path, and with `verify_digests` the tensors' recorded sha256 digests; Hub
    repo ids ("org/name") pass through untouched."""
    if _looks_local(path):
        directory = Path(os.fspath(path)).expanduser() / subfolder
        checked = inspect_checkpoint(directory)
        if verify_digests:
            from .checkpoint_digests import require_digests_match  # (a sibling that imports this module)

            require_digests_match(directory, files=checked.files)


def check_model_class(config_dict: Mapping[str, Any], *, model_type: str, class_name: str, where: str) -> None:
    """OSError naming the class to use when a checkpoint (its config.json dict) would load into the wrong class:
    a TriLM into a FloatLM class (its ternary layers would stay randomly initialized), a FloatLM into a TriLM class
    (its float weights would be ternarized), or any non-Spectra, non-Llama model into either. A Llama checkpoint is
    accepted by both: as float weights by FloatLM, converted and checked for ternarity by TriLM."""
    found = config_dict.get("model_type")
    if found in (model_type, "llama"):
        return
    if found == "trilm":
        weight_format = config_dict.get("weight_format", "latent")
        right = f"TriLM{class_name.removeprefix('FloatLM')}"
        consequence = "leave its ternary layers randomly initialized"
    elif found == "floatlm":
        weight_format = "float"
        right = f"FloatLM{class_name.removeprefix('TriLM')}"
        consequence = "ternarize its float weights"
    else:
        raise OSError(
            f"{where} holds a model_type {found!r} checkpoint, not a Spectra model: {class_name} cannot load it; "
            "use AutoModelForCausalLM"
        )
    raise OSError(
        f"{where} is a {found} checkpoint ({weight_format} weights): {class_name} would {consequence}. "
        f"Load it with {right} or AutoModelForCausalLM"
    )


def hub_weight_files(repo_id: str, kwargs: Mapping[str, Any]) -> list[Path]:
    """The safetensors files of Hub checkpoint `repo_id` that a load just put in the local cache ([] if none)."""
    from transformers.utils import cached_file

    options = {key: kwargs[key] for key in ("cache_dir", "revision", "subfolder") if kwargs.get(key)}

    def cached(name: str) -> str | None:
        return cached_file(
            repo_id, name, local_files_only=True, _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False, **options,
        )

    index = cached(INDEX_FILE)
    if index is not None:
        return weight_files(Path(index).parent)
    single = cached(WEIGHTS_FILE)
    return [Path(single)] if single is not None else []


_HUB_KEYS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def checkpoint_config_dict(pretrained_model_name_or_path, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """config.json of a local or Hub checkpoint as a dict (None if it cannot be read: from_pretrained then raises
    its own error)."""
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(
            pretrained_model_name_or_path, **{key: kwargs[key] for key in _HUB_KEYS if key in kwargs}
        )
    except OSError:
        return None
    return config_dict


def check_loaded_keys(loading_info: Mapping[str, Any], model: torch.nn.Module, *, where: str) -> None:
    """After loading: OSError naming a tensor the checkpoint lacked (transformers would otherwise leave it at its
    initialization, for packed buffers uninitialized memory). Covers Hub checkpoints, which are not pre-checked."""
    stored_names = set(model.state_dict())
    missing = sorted(name for name in loading_info.get("missing_keys", ()) if name in stored_names)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise OSError(f"{where} is incomplete: tensor {missing[0]} is missing{more}; {_FIX}")


class CheckedLoadingMixin:
    """`from_pretrained` that checks the checkpoint first (see the module docstring) and refuses a checkpoint of
    another Spectra family; subclasses add their own loading in `_from_checked_pretrained`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, verify_digests=None, **kwargs):
        """`verify_digests`: check the sha256 digests a checkpoint's files record for their tensors (see
        `checkpoint_digests`) before loading; default `VERIFY_DIGESTS_BY_DEFAULT`. Files without digests load."""
        verify = VERIFY_DIGESTS_BY_DEFAULT if verify_digests is None else verify_digests
        if not kwargs.get("gguf_file"):
            check_local_checkpoint(
                pretrained_model_name_or_path, subfolder=kwargs.get("subfolder") or "", verify_digests=verify
            )
        config_dict = None
        if kwargs.get("config") is None:
            config_dict = checkpoint_config_dict(pretrained_model_name_or_path, kwargs)
            if config_dict is not None:
                check_model_class(
                    config_dict, model_type=cls.config_class.model_type, class_name=cls.__name__,
                    where=os.fspath(pretrained_model_name_or_path),
                )
        result = cls._from_checked_pretrained(pretrained_model_name_or_path, config_dict, *args, **kwargs)
        if verify and not kwargs.get("gguf_file") and not _looks_local(pretrained_model_name_or_path):
            from .checkpoint_digests import require_digests_match

            files = hub_weight_files(pretrained_model_name_or_path, kwargs)
            if files:  # the files just loaded, from the Hub cache: checked after the fact, before the model is used
                require_digests_match(pretrained_model_name_or_path, files=files)
        return result

    @classmethod
    def _from_checked_pretrained(cls, pretrained_model_name_or_path, config_dict, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing a result with tensors the checkpoint did not hold."""
        wants_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        if not kwargs.get("gguf_file"):
            check_loaded_keys(loading_info, model, where=os.fspath(pretrained_model_name_or_path))
        return (model, loading_info) if wants_info else model
