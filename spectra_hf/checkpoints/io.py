"""Tensor-by-tensor access to Spectra and Llama checkpoints, and a sharded safetensors writer.

`open_checkpoint(path)` tells what a directory holds (`Checkpoint.kind`) and gives its weights in one vocabulary,
the Llama one: `Checkpoint.weights()` yields `(name, value)` with Llama tensor names (`model.layers.0.mlp.up_proj
.weight`, ...) where `value` is a float tensor, or a `Ternary` (T and per-shard scales) for the ternary matrices of
any TriLM: latent (ternarized one decoder layer at a time, q/k/v scales shared as in the model), packed (unpacked
per tensor) or an original release (recovered from g_s * T, refused with the tensor's name if not ternary).
Nothing holds more than one decoder layer's tensors at a time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spectra_hf.checkpoints.safetensors_io import ShardFileWriter, TensorEntry, read_tensor
from spectra_hf.errors import CheckpointError
from spectra_hf.modeling.checkpoint_checks import (
    INDEX_FILE,
    inspect_checkpoint,
    linear_shapes,
    read_checkpoint_config,
)
from spectra_hf.modeling.checkpoint_digests import DigestReport, check_digests
from spectra_hf.modeling.configuration_trilm import LOADING_KEYS, TERNARY_STORAGE_KEYS, TriLMConfig
from spectra_hf.modeling.modeling_trilm import TERNARY_SHARD_DIM
from spectra_hf.modeling.packing import unpack_ternary
from spectra_hf.modeling.ternary import TernaryLinear, dense_of_digits, recover_ternary, share_scales

KINDS = ("trilm-latent", "trilm-packed", "trilm-release", "floatlm", "llama")
FORMAT_OF_KIND = {
    "trilm-latent": "latent",
    "trilm-packed": "packed",
    "trilm-release": "unpacked release",
    "floatlm": "float",
    "llama": "float",
}
_TERNARY_NAME = re.compile(
    r"^model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.(weight|weight_packed|weight_scale)$"
)


@dataclass
class Ternary:
    """A ternary matrix: `digits` T (int8 [out, in], values in {-1, 0, +1}), `scales` (float32 [shards]) and the
    dimension the shards split (0: output rows, 1: input columns)."""

    digits: torch.Tensor
    scales: torch.Tensor
    shard_dim: int

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """g * T as `dtype` [out, in]."""
        return dense_of_digits(self.digits, self.scales, self.shard_dim, dtype)

    @property
    def shape(self) -> torch.Size:
        return self.digits.shape


def _checked(check, *args, **kwargs):
    """Run a modeling.checkpoint_checks function, raising its OSError as a CheckpointError (the CLI's one line)."""
    try:
        return check(*args, **kwargs)
    except CheckpointError:
        raise
    except OSError as error:
        raise CheckpointError(str(error)) from error


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of the checkpoint directory `path`, with a clear error if missing, unfinished or unreadable."""
    return _checked(read_checkpoint_config, path)


# What a config.json says about storage and loading rather than about the network.
_STORAGE_KEYS = (*LOADING_KEYS, *TERNARY_STORAGE_KEYS)


def config_architecture(config: dict[str, Any]) -> dict[str, Any]:
    """A config.json without its storage keys: the architecture, shared by the TriLM, FloatLM and Llama forms."""
    return {key: value for key, value in config.items() if key not in _STORAGE_KEYS}


def checkpoint_kind(config: dict[str, Any]) -> str:
    """One of KINDS, from a config.json dict."""
    model_type = config.get("model_type")
    if model_type == "trilm":
        return f"trilm-{config.get('weight_format', 'latent')}"
    if model_type == "floatlm":
        return "floatlm"
    if model_type == "llama":
        return "trilm-release" if "pretraining_model_parallel" in config else "llama"
    raise CheckpointError(
        f"model_type {model_type!r} is not a Spectra checkpoint: expected 'trilm', 'floatlm' or 'llama' "
        "(the original SpectraSuite release)"
    )


class Checkpoint:
    """A checkpoint directory opened for streaming: its config, kind and safetensors files (headers only)."""

    def __init__(self, path: str | os.PathLike, *, verify_digests: bool = True) -> None:
        """Opens `path` after checking it is complete and consistent (`modeling.checkpoint_checks`): every tensor
        config.json implies present with its shape and dtype, packed scales finite and not negative, and with
        `verify_digests` every tensor's recorded sha256 digest (`modeling.checkpoint_digests`; the result is
        `self.digests`). Raises CheckpointError naming the problem (the tensor) otherwise, before any conversion."""
        self.path = Path(path)
        self.config = read_config(self.path)
        self.kind = checkpoint_kind(self.config)
        checked = _checked(inspect_checkpoint, self.path)
        if not checked.files:
            raise CheckpointError(
                f"{self.path} holds no model.safetensors (or index of shards): only safetensors checkpoints are read"
            )
        self.architecture = checked.architecture  # the config object: config.json with the class defaults filled in
        self.files = checked.files
        self._entries: dict[str, TensorEntry] = checked.tensors
        self._file_of: dict[str, Path] = checked.file_of
        self._latent_cache: tuple[int, dict[str, Ternary]] | None = None
        self.digests: DigestReport | None = None
        if verify_digests:
            self.digests = _checked(check_digests, self.path, files=self.files)
            if not self.digests.ok:
                raise CheckpointError(f"corrupt checkpoint {self.digests.summary()}")

    @property
    def family(self) -> str:
        return "trilm" if self.kind.startswith("trilm") else "floatlm"

    @property
    def format(self) -> str:
        return FORMAT_OF_KIND[self.kind]

    @property
    def shards(self) -> int:
        return int(self.config.get("pretraining_model_parallel", 1))

    def tensor_names(self) -> list[str]:
        """Names stored in the files, in file order."""
        return list(self._file_of)

    def tensor(self, name: str) -> torch.Tensor:
        """One stored tensor, read from its file."""
        if name not in self._entries:
            raise CheckpointError(f"{self.path} has no tensor {name!r}: the checkpoint is incomplete")
        return read_tensor(self._file_of[name], self._entries[name])

    def stored_shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def stored_dtype(self, name: str) -> str:
        """The safetensors dtype string of a stored tensor ("F16", "U8", ...)."""
        return self._entries[name].dtype

    def names(self) -> list[str]:
        """Llama-vocabulary names of the weights (packed pairs appear once, as `P.weight`), in file order."""
        names = []
        for name in self._file_of:
            if name.endswith(".weight_scale"):
                continue
            names.append(name.removesuffix("_packed") if name.endswith(".weight_packed") else name)
        return names

    def is_ternary(self, name: str) -> bool:
        return self.family == "trilm" and _TERNARY_NAME.match(name) is not None

    def shape(self, name: str) -> tuple[int, ...]:
        """Logical shape of weight `name` (Llama vocabulary), from headers and config only."""
        match = _TERNARY_NAME.match(name)
        if match and self.kind == "trilm-packed":
            return linear_shapes(self.architecture)[match.group(2)]
        return self.stored_shape(name)

    def weight(self, name: str) -> torch.Tensor | Ternary:
        """Weight `name` (Llama vocabulary): a float tensor, or a `Ternary` for a TriLM's ternary matrices."""
        match = _TERNARY_NAME.match(name)
        if not (match and self.family == "trilm"):
            return self.tensor(name)
        layer, path = int(match.group(1)), match.group(2)
        shard_dim = TERNARY_SHARD_DIM[path]
        if self.kind == "trilm-packed":
            prefix = name.removesuffix(".weight")
            try:
                shape = linear_shapes(self.architecture)[path]
                digits = unpack_ternary(self.tensor(f"{prefix}.weight_packed"), shape)
            except ValueError as error:
                raise CheckpointError(f"{self.path}: tensor {prefix}.weight_packed: {error}") from error
            return Ternary(digits, self.tensor(f"{prefix}.weight_scale").float(), shard_dim)
        if self.kind == "trilm-release":
            try:
                digits, scales = recover_ternary(self.tensor(name), self.shards, shard_dim, name)
            except ValueError as error:
                raise CheckpointError(f"{self.path}: {error}") from error
            return Ternary(digits, scales, shard_dim)
        return self._latent_layer(layer)[path]

    def _latent_layer(self, layer: int) -> dict[str, Ternary]:
        """Ternarize decoder layer `layer` of a latent TriLM exactly as the model does (shared q/k/v scales)."""
        if self._latent_cache is None or self._latent_cache[0] != layer:
            trilm = self.architecture  # config.json with TriLMConfig's defaults filled in (ternary_eps, ...)
            assert isinstance(trilm, TriLMConfig), "only a latent TriLM checkpoint has latent ternary layers"
            modules = {}
            for path, shard_dim in TERNARY_SHARD_DIM.items():
                latent = self.tensor(f"model.layers.{layer}.{path}.weight")
                module = TernaryLinear(
                    latent.shape[1], latent.shape[0], shards=self.shards, shard_dim=shard_dim,
                    eps=trilm.ternary_eps, device="meta",
                )
                module.weight = torch.nn.Parameter(latent, requires_grad=False)
                modules[path] = module
            if trilm.ternary_fused_qkv_scale:
                share_scales(*(modules[f"self_attn.{p}_proj"] for p in "qkv"))
            ternary: dict[str, Ternary] = {}
            for path, module in modules.items():
                digits, scales = module.ternary_weight()
                ternary[path] = Ternary(digits, scales, module.shard_dim)
            self._latent_cache = (layer, ternary)
        return self._latent_cache[1]

    def weights(self) -> Iterator[tuple[str, torch.Tensor | Ternary]]:
        """(name, weight) for every weight, in file order (see the module docstring)."""
        for name in self.names():
            yield name, self.weight(name)


class ShardedWriter:
    """Writes tensors into safetensors shards of at most `max_shard_bytes` (plus an index when there are several).

    Tensors go to disk as they are added (see `safetensors_io`), so memory holds none of them. Call `finish()`
    after the last `add()`. Used as a context manager, an exception before `finish()` returns calls `abort()`: no
    file handle is left open and no shard file of this writer is left behind.
    """

    def __init__(self, directory: str | os.PathLike, *, max_shard_bytes: int = 2 << 30) -> None:
        self.directory = Path(directory)
        self.max_shard_bytes = max_shard_bytes
        self._current: ShardFileWriter | None = None
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._current is not None and self._current.nbytes and self._current.nbytes + nbytes > self.max_shard_bytes:
            self._close_current()
        if self._current is None:
            path = self.directory / f"shard-{len(self._shards):05d}.tmp"
            self._current = ShardFileWriter(path)
            self._shards.append((path, []))
        self._current.add(name, tensor)
        self._shards[-1][1].append(name)
        self.total_bytes += nbytes

    def _close_current(self) -> None:
        assert self._current is not None, "no shard is open"
        self._current.close()
        self._current = None

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        if kind is not None:
            self.abort()

    def abort(self) -> None:
        """Give up the checkpoint: close the open shard and remove every shard file this writer wrote (not yet
        renamed by `finish()`). Files it did not write are left alone."""
        current, self._current = self._current, None
        if current is not None:
            current.abort()
        for path, _ in self._shards:
            path.unlink(missing_ok=True)
        self._shards = []

    def finish(self) -> list[Path]:
        """Close the last shard, give the shards their final names (`model.safetensors` or
        `model-0000k-of-0000n.safetensors`) and write the index when there are several."""
        if self._current is not None:
            self._close_current()
        count = len(self._shards)
        weight_map, files = {}, []
        for index, (path, names) in enumerate(self._shards, start=1):
            final = self.directory / (
                "model.safetensors" if count == 1 else f"model-{index:05d}-of-{count:05d}.safetensors"
            )
            os.replace(path, final)
            files.append(final)
            weight_map.update(dict.fromkeys(names, final.name))
        if count > 1:
            index_data = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.directory / INDEX_FILE).write_text(json.dumps(index_data, indent=2) + "\n", encoding="utf-8")
        return files
