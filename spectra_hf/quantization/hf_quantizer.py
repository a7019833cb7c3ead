"""The `spectra_gptq` quantization method: transformers loads the 5/6/7-bit QuantLMs its GPTQConfig refuses.

transformers' GPTQ path (GPTQConfig, optimum's GPTQQuantizer) accepts 2, 3, 4 and 8 bits only, although gptqmodel
packs and runs 2..8. QuantLMs at those four widths keep `quant_method: "gptq"`, so a stock transformers + optimum +
gptqmodel install loads them without this package. The widths GPTQConfig refuses are written with
`quant_method: "spectra_gptq"`, which `import spectra_hf` registers through transformers' public hooks
(`register_quantization_config`, `register_quantizer`) when transformers' quantizer registry loads: the same GPTQ v1
tensors, loaded by transformers' own GPTQ quantizer with the bit-width check widened to 2..8 (optimum converts the
linears to gptqmodel's layers, gptqmodel runs them). So `AutoModelForCausalLM.from_pretrained` loads every width
`spectra-hf quantize` writes.

A separate method name rather than widening "gptq" itself: the registry refuses to replace a built-in method, and
stock transformers must not see a 6-bit "gptq" config it would refuse in one place and mis-handle in another.
"""

from __future__ import annotations

import functools
from typing import Any

from spectra_hf.errors import ConfigError, MissingDependencyError

SPECTRA_GPTQ_METHOD = "spectra_gptq"
SPECTRA_GPTQ_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)  # widths gptqmodel's torch kernel packs and runs
_GPTQ_CONFIG_BITS = 8  # a width GPTQConfig's own checks accept, used while they run


@functools.cache
def quantization_classes() -> tuple[type, type]:
    """(SpectraGPTQConfig, SpectraGPTQHfQuantizer), defined on first use: importing transformers' quantizer modules
    loads its quantizer registry, whose import hook (`spectra_hf.auto_registration`) calls `register` here, so this
    module must import completely before they load."""
    from transformers.quantizers.quantizer_gptq import GptqHfQuantizer
    from transformers.utils.quantization_config import GPTQConfig

    class SpectraGPTQConfig(GPTQConfig):
        """GPTQConfig for any width 2..8 (`quant_method: "spectra_gptq"`); every other field means what it does
        there."""

        def __init__(self, bits: int, **kwargs: Any) -> None:
            kwargs.pop("quant_method", None)
            super().__init__(bits=bits, **kwargs)
            self.quant_method = SPECTRA_GPTQ_METHOD  # type: ignore[assignment]  # registered, not an enum member

        def post_init(self) -> None:
            if self.bits not in SPECTRA_GPTQ_BITS:
                raise ConfigError(
                    f"spectra_gptq quantizes to {SPECTRA_GPTQ_BITS[0]}..{SPECTRA_GPTQ_BITS[-1]} bits, not {self.bits}"
                )
            bits, self.bits = self.bits, _GPTQ_CONFIG_BITS
            try:
                super().post_init()
            finally:
                self.bits = bits

    class SpectraGPTQHfQuantizer(GptqHfQuantizer):
        """transformers' GPTQ quantizer with optimum's GPTQQuantizer widened to 2..8 bits (loading only)."""

        def __init__(self, quantization_config: Any, **kwargs: Any) -> None:
            # GptqHfQuantizer.__init__ builds optimum's GPTQQuantizer, which refuses 5..7 bits: skip to its base
            super(GptqHfQuantizer, self).__init__(quantization_config, **kwargs)
            if not self.pre_quantized:
                raise ConfigError(
                    "spectra_gptq only loads QuantLMs; quantize a FloatLM with `spectra-hf quantize` "
                    "(or spectra_hf.quantization.gptq.export_quantlms)"
                )
            try:
                from spectra_hf.quantization.gptq import gptq_quantizer_class

                self.optimum_quantizer = gptq_quantizer_class()(**quantization_config.to_dict_optimum())
            except ImportError as error:
                raise MissingDependencyError(
                    f"loading a spectra_gptq QuantLM needs optimum and gptqmodel ({error}): "
                    "pip install optimum gptqmodel"
                ) from error

    for defined in (SpectraGPTQConfig, SpectraGPTQHfQuantizer):
        defined.__qualname__ = defined.__name__  # shown in reprs and transformers' messages
    return SpectraGPTQConfig, SpectraGPTQHfQuantizer


def spectra_gptq_config(bits: int, **kwargs: Any) -> Any:
    """A `quant_method: "spectra_gptq"` config (a GPTQConfig subclass), e.g. to choose the kernel:
    `from_pretrained(path, quantization_config=spectra_gptq_config(6, backend="torch"))`."""
    return quantization_classes()[0](bits=bits, **kwargs)


def register() -> None:
    """Register `spectra_gptq` with transformers (once; later calls do nothing)."""
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        register_quantization_config,
        register_quantizer,
    )

    if SPECTRA_GPTQ_METHOD in AUTO_QUANTIZATION_CONFIG_MAPPING:
        return
    config_class, quantizer_class = quantization_classes()
    register_quantization_config(SPECTRA_GPTQ_METHOD)(config_class)
    register_quantizer(SPECTRA_GPTQ_METHOD)(quantizer_class)


__all__ = ["SPECTRA_GPTQ_BITS", "SPECTRA_GPTQ_METHOD", "quantization_classes", "register", "spectra_gptq_config"]
