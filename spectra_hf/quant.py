"""Former home of QuantLM loading, kept because published model cards say `from spectra_hf.quant import load_quantlm`.

New code imports from `spectra_hf.quantization`.
"""

from spectra_hf.quantization.gptq import FROM_PRETRAINED_BITS, load_quantlm

__all__ = ["FROM_PRETRAINED_BITS", "load_quantlm"]
