"""bitsandbytes baselines: a FloatLM loaded with 8-bit (LLM.int8) or 4-bit (NF4/FP4) weights, to compare with QuantLM.

bitsandbytes quantizes at load time, without calibration: round-to-nearest per row (8-bit, with an fp32 scale per
output row) or per block of 64 weights (4-bit, one fp32 absmax per block). The decoder linears are quantized;
embeddings and the LM head stay in floating point (transformers skips the head), as in QuantLM. Runs on CPU with
bitsandbytes >= 0.45.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from spectra_hf.checkpoints.io import read_config
from spectra_hf.errors import ConfigError
from spectra_hf.quantization.gptq import check_floatlm_config
from spectra_hf.suite import FLOAT_BITS

BNB_BITS: tuple[int, ...] = (4, 8)


def load_floatlm_bnb(
    floatlm: str | Path,
    *,
    bits: int,
    quant_type: str = "nf4",
    compute_dtype: torch.dtype = torch.float32,
    device: str = "cpu",
):
    """Load a FloatLM with its decoder linears quantized by bitsandbytes.

    Args:
        floatlm: FloatLM directory (model_type floatlm needs `import spectra_hf`, which this module does).
        bits: 8 (LLM.int8) or 4.
        quant_type: 4-bit data type, "nf4" or "fp4".
        compute_dtype: dtype 4-bit layers compute in.
        device: where to load it ("cpu" works with bitsandbytes 0.50).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if bits not in BNB_BITS:
        raise ConfigError(f"bitsandbytes loads weights at {BNB_BITS} bits, not {bits}")
    if quant_type not in ("nf4", "fp4"):
        raise ConfigError(f"quant_type {quant_type!r} is not a bitsandbytes 4-bit type: use nf4 or fp4")
    floatlm = Path(floatlm)
    check_floatlm_config(read_config(floatlm), where=str(floatlm), packable=False)
    config = (
        BitsAndBytesConfig(load_in_8bit=True)
        if bits == 8
        else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=compute_dtype)
    )
    return AutoModelForCausalLM.from_pretrained(floatlm, quantization_config=config, device_map=device).eval()


def _stored_bits(module: Any) -> int:
    """Bits a bitsandbytes linear stores: its packed weight plus the scales it needs to dequantize."""
    weight = module.weight
    bits = weight.numel() * weight.element_size() * 8
    scb = getattr(weight, "SCB", None)  # 8-bit: one scale per output row
    if scb is not None:
        bits += scb.numel() * scb.element_size() * 8
    state = getattr(weight, "quant_state", None)  # 4-bit: absmax per block and the 16-value code table
    if state is not None:
        bits += sum(t.numel() * t.element_size() * 8 for t in state.as_dict().values() if torch.is_tensor(t))
    return bits


def bnb_stored_bits(model: Any) -> int:
    """Bits a loaded bitsandbytes model stores: its quantized linears as measured (packed weights plus every scale,
    absmax and code table they keep), every other parameter at 16 bits.

    Not the paper's size in bits (`spectra_hf.suite.size_bits`, which counts an architecture at a nominal width per
    weight): bitsandbytes has no such nominal width, so its stored bits are measured from the model instead.
    """
    import bitsandbytes as bnb

    quantized = [m for m in model.modules() if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))]
    if not quantized:
        raise ConfigError("the model has no bitsandbytes layers; load it with load_floatlm_bnb")
    quantized_params = {id(m.weight) for m in quantized}
    rest = sum(p.numel() for p in model.parameters() if id(p) not in quantized_params)
    return sum(_stored_bits(m) for m in quantized) + rest * FLOAT_BITS

