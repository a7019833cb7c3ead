"""What a checkpoint directory holds: family, suite size, storage format, parameters and ternary statistics.

Reads config.json and safetensors headers; only the ternary statistics read tensor data (one tensor at a time).
"""

from __future__ import annotations

import math
import os
from typing import Any

from tqdm.auto import tqdm

from spectra_hf.checkpoints.io import Checkpoint, Ternary
from spectra_hf.checkpoints.safetensors_io import DTYPES
from spectra_hf.modeling.ternary_kernels import cpu_kernel_status
from spectra_hf.modeling.ternary_stats import TernaryCounts
from spectra_hf.suite import FAMILY_PREFIX, SIZES


def suite_size(config: dict[str, Any]) -> str | None:
    """The registry size whose architecture (hidden, intermediate, heads, layers) matches `config`, else None."""
    for size, spec in SIZES.items():
        if (spec.hidden_size, spec.intermediate_size, spec.num_attention_heads, spec.num_hidden_layers) == (
            config.get("hidden_size"),
            config.get("intermediate_size"),
            config.get("num_attention_heads"),
            config.get("num_hidden_layers"),
        ):
            return size
    return None


def describe_checkpoint(path: str | os.PathLike, *, stats: bool = True, progress: bool = False) -> dict[str, Any]:
    """A summary of the checkpoint at `path` (raises SpectraError if it is missing, corrupt or not a Spectra model).

    Keys: path, family, size (registry size or None), name (suite name or None), format ("latent", "packed",
    "unpacked release", "float"), resumable (latent TriLM), pretraining_model_parallel, params (logical parameter
    count), weight_bytes (on disk), digests (what checking the recorded sha256 digests found; a mismatch raises),
    ternary_params, ternary_bits_per_weight and cpu_inference (TriLM), and with
    `stats` for a TriLM: zero_fraction, plus_fraction, minus_fraction, scale_min, scale_max over all ternary matrices.
    """
    source = Checkpoint(path)
    size = suite_size(source.config)
    names = source.names()
    shapes = {name: source.shape(name) for name in names}
    ternary_names = [name for name in names if source.is_ternary(name)]
    info: dict[str, Any] = {
        "path": str(source.path),
        "family": source.family,
        "size": size,
        "name": f"{FAMILY_PREFIX[source.family]}_{size}" if size else None,
        "format": source.format,
        "resumable": source.kind == "trilm-latent",
        "params": sum(math.prod(shape) for shape in shapes.values()),
        "weight_bytes": sum(file.stat().st_size for file in source.files),
        "digests": source.digests.summary().removeprefix(f"{source.path}: ") if source.digests else None,
    }
    if source.family != "trilm":
        return info
    ternary_params = sum(math.prod(shapes[name]) for name in ternary_names)
    stored = [n for n in source.tensor_names() if n.endswith((".weight_packed", ".weight_scale"))] or ternary_names
    stored_bytes = sum(math.prod(source.stored_shape(n)) * DTYPES[source.stored_dtype(n)].itemsize for n in stored)
    info.update(
        pretraining_model_parallel=source.shards,
        ternary_params=ternary_params,
        ternary_bits_per_weight=8 * stored_bytes / ternary_params if ternary_params else None,
        cpu_inference=cpu_kernel_status(),  # the path `auto` takes on this machine's CPU, and why
    )
    if stats and ternary_names:
        counts = TernaryCounts()
        for name in tqdm(ternary_names, desc="ternary stats", unit="tensor", disable=not progress):
            weight = source.weight(name)
            assert isinstance(weight, Ternary)
            counts.add(weight.digits, weight.scales)
        info.update(**counts.fractions(), scale_min=counts.scale_min, scale_max=counts.scale_max)
    return info
