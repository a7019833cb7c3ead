"""Former home of the bitsandbytes baseline, kept for users' code that followed the 0.1 README.

New code imports `load_floatlm_bnb` from `spectra_hf.quantization`.
"""

from spectra_hf.quantization.bnb import bnb_size_bits, load_floatlm_bnb

__all__ = ["bnb_size_bits", "load_floatlm_bnb"]
