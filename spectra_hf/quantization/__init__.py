"""QuantLM (GPTQ through optimum / gptqmodel) and the bitsandbytes baselines it is compared with."""

from spectra_hf.quantization.bnb import load_floatlm_bnb
from spectra_hf.quantization.gptq import load_quantlm

__all__ = ["load_floatlm_bnb", "load_quantlm"]
