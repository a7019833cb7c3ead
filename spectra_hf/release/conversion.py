"""Convert one downloaded release revision into a spectra-hf export, and verify it against the release tensors.

    TriLM   TriLM_*_Unpacked (fp16 g_s * T)       -> packed TriLM (T and per-shard scales recovered exactly)
    FloatLM FloatLM_* (fp16 Llama)                -> FloatLM export (model_type floatlm; loads in LlamaForCausalLM too)
    QuantLM QuantLM_*_Unpacked (dequantized fp16) -> packed GPTQ (codes and scales recovered, see quantization.recover)

Every conversion is checked before it is accepted: the packed TriLM dequantizes to every release tensor bit for bit,
the FloatLM holds the release tensors unchanged, the recovered QuantLM reloads and dequantizes to the release
weights (differences counted in ulps). Input that is not what its name claims is refused naming the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from spectra_hf.checkpoints.convert import convert_checkpoint
from spectra_hf.checkpoints.exports import ExportInfo, read_export_info, write_export_info
from spectra_hf.checkpoints.io import Checkpoint, Ternary, read_config
from spectra_hf.errors import CheckpointError, SpectraError
from spectra_hf.release.discovery import ReleaseRevision
from spectra_hf.suite import ARCHITECTURE_KEYS, config_kwargs

logger = logging.get_logger(__name__)

CONVERSIONS = {
    "trilm": "release fp16 g*T -> packed TriLM (T and per-shard scales recovered exactly)",
    "floatlm": "release fp16 Llama -> FloatLM export (tensors unchanged)",
    "quantlm": "release dequantized fp16 -> packed GPTQ (integer codes and fp16 scales recovered)",
}


@dataclass
class Conversion:
    """What converting one revision did: the conversion, the checks it passed, warnings, and details."""

    conversion: str
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def architecture_warnings(revision: ReleaseRevision, config: dict[str, Any]) -> list[str]:
    """How the release config differs from the registry's architecture for the model's name (empty if it does not)."""
    expected = config_kwargs(revision.model.name)
    differences = [
        f"{key} {config.get(key)} (registry: {expected[key]})"
        for key in ARCHITECTURE_KEYS
        if key in expected and key in config and config[key] != expected[key]
    ]
    if not differences:
        return []
    return [
        f"{revision.key}: architecture differs from the registry's {revision.model.name}: " + ", ".join(differences)
    ]


def provenance(revision: ReleaseRevision) -> dict[str, Any]:
    return {
        "repo": revision.source_repo,
        "revision": revision.source_revision,
        "commit": revision.source_commit,
    }


def convert_revision(revision: ReleaseRevision, source: Path, out: Path) -> Conversion:
    """Convert the downloaded revision at `source` into the export directory `out` and verify it.

    Raises:
        CheckpointError: the release files are not the family they claim to be (the message names the tensor).
    """
    config = read_config(source)
    family = revision.model.family
    result = Conversion(conversion=CONVERSIONS[family], warnings=architecture_warnings(revision, config))
    for warning in result.warnings:
        logger.warning(warning)
    if family == "quantlm":
        _convert_quantlm(revision, source, out, result)
    else:
        _convert_trained(revision, source, out, config, result)
    info = read_export_info(out) if family == "quantlm" else None
    extra = dict(info.extra) if info is not None else {}
    extra.update({"release": provenance(revision), "conversion": result.conversion, "checks": result.checks})
    write_export_info(
        out,
        ExportInfo(
            name=revision.model.name,
            family=family,
            step=revision.step,
            tokens_seen=revision.tokens_seen,
            format={"trilm": "packed", "floatlm": "float", "quantlm": "gptq"}[family],
            extra=extra,
        ),
    )
    return result


def _convert_trained(
    revision: ReleaseRevision, source: Path, out: Path, config: dict[str, Any], result: Conversion
) -> None:
    family = revision.model.family
    if family == "trilm" and "pretraining_model_parallel" not in config:
        raise CheckpointError(
            f"{revision.key} is named a TriLM but its config.json has no pretraining_model_parallel (the release's "
            "scale-shard count): it is not a TriLM release checkpoint"
        )
    if family == "floatlm" and "pretraining_model_parallel" in config:
        raise CheckpointError(f"{revision.key} is named a FloatLM but its config.json describes a TriLM release")
    try:
        convert_checkpoint(source, out, to="packed" if family == "trilm" else "floatlm", progress=False)
    except (ValueError, OSError, SpectraError) as error:  # the reader's message names the tensor
        raise CheckpointError(f"{revision.key}: {error}") from error
    release, converted = Checkpoint(source), Checkpoint(out)  # Checkpoint(out) checks every recorded digest
    if converted.digests is None or not converted.digests.complete:
        raise CheckpointError(f"{revision.key}: the converted export at {out} does not carry a digest for every tensor")
    result.checks.append(f"sha256 digests recorded for all {converted.digests.checked} tensors and checked")
    matrices = tensors = 0
    shards = release.shards
    for name in release.tensor_names():
        expected = release.tensor(name)
        value = converted.weight(name)
        if isinstance(value, Ternary):
            matrices += 1
            value = value.dense(expected.dtype)
        if value.dtype != expected.dtype or not torch.equal(value, expected):
            raise CheckpointError(
                f"{revision.key}: converted {name} does not reproduce the release tensor; please report it"
            )
        tensors += 1
    if family == "trilm":
        result.checks.append(
            f"ternary: {matrices} matrices with T in {{-1, 0, +1}} and {shards} scale(s) per shard layout recovered"
        )
        result.checks.append(f"packed dequantizes to all {tensors} release tensors bit for bit")
    else:
        result.checks.append(f"all {tensors} release tensors stored unchanged")
    result.details = {"tensors": tensors, "ternary_matrices": matrices}


def _convert_quantlm(revision: ReleaseRevision, source: Path, out: Path, result: Conversion) -> None:
    from spectra_hf.quantization.recover import recover_quantlm

    model = revision.model
    assert model.bits is not None, "a QuantLM has a bit width"
    report = recover_quantlm(source, out, bits=model.bits, name=model.name, base_model=model.base_model)
    fit, again = report.fit, report.reloaded
    grouping = "per output channel" if report.group_size < 0 else f"groups of {report.group_size}"
    result.checks.append(
        f"{model.bits}-bit lattice ({grouping}): {report.tensors} weights, {fit.values} values, "
        f"{fit.differing} off by up to {fit.max_ulps} ulp"
    )
    exact = "bit for bit" if again.bit_exact else f"except {again.differing} values (max {again.max_ulps} ulp)"
    result.checks.append(f"packed GPTQ reloads and dequantizes to the release weights {exact}")
    if report.narrower_than_named:
        result.warnings.append(
            f"{revision.key}: the recovered codes use {report.levels} of the {1 << model.bits} levels of "
            f"{model.bits} bits, as a {report.code_bits}-bit QuantLM's do: narrower than its name says"
        )
    if report.inexact:
        result.warnings.append(f"{revision.key}: {len(report.inexact)} weights recovered inexactly (not bit for bit)")
    result.details = report.as_dict()
