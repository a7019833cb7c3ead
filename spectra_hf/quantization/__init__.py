"""QuantLM (GPTQ through optimum / gptqmodel) and the bitsandbytes baselines it is compared with.

The two loaders are imported on first access, so that importing one submodule (hf_quantizer, calibration, ...)
does not import the others."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"load_floatlm_bnb": "spectra_hf.quantization.bnb", "load_quantlm": "spectra_hf.quantization.gptq"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load_floatlm_bnb", "load_quantlm"]
