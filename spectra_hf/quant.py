"""Former home of QuantLM loading, kept because model cards published before 0.1.0's layout say
`from spectra_hf.quant import load_quantlm`. Importing it warns (FutureWarning) and names the new path; it is removed
in spectra-hf 0.3.0.
"""

import warnings

from spectra_hf.quantization.gptq import FROM_PRETRAINED_BITS, load_quantlm

REMOVED_IN = "0.3.0"

warnings.warn(
    "spectra_hf.quant is deprecated: import load_quantlm from spectra_hf.quantization (and FROM_PRETRAINED_BITS "
    f"from spectra_hf.quantization.gptq); spectra_hf.quant is removed in spectra-hf {REMOVED_IN}",
    FutureWarning,
    stacklevel=2,
)

__all__ = ["FROM_PRETRAINED_BITS", "load_quantlm"]
