"""The `spectra_gptq` quantization method: transformers loads the 5/6/7-bit QuantLMs its GPTQConfig refuses.

transformers' GPTQ path (GPTQConfig, optimum's GPTQQuantizer) accepts 2, 3, 4 and 8 bits only, although gptqmodel
packs and runs 2..8. QuantLMs at those four widths say `quant_method: "gptq"` and load with a stock transformers +
optimum + gptqmodel install. The widths GPTQConfig refuses say `quant_method: "spectra_gptq"`: the same GPTQ v1
tensors, loaded by transformers' own GPTQ quantizer with the bit-width check widened to 2..8 (optimum converts the
linears to gptqmodel's layers, gptqmodel runs them). Importing this module registers that method with transformers
(`register_quantization_config`, `register_quantizer`).

It is imported two ways, and this file is the one definition for both:
- as `spectra_hf.modeling.quantlm_gptq`, when transformers' quantizer registry loads after `import spectra_hf`
  (`spectra_hf.auto_registration`): then plain `AutoModelForCausalLM.from_pretrained` loads every width;
- as remote code without spectra-hf: a `spectra_gptq` export carries this file and names `QuantLMForCausalLM` in its
  config's `auto_map`, so `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` imports it (which
  registers the method) before it looks the quantizer up. Without `trust_remote_code=True` transformers uses its
  own LlamaForCausalLM for a `model_type: llama` config and never imports this file.

Like the rest of `modeling/`, it imports only torch and transformers (optimum and gptqmodel inside the quantizer, as
transformers' own GPTQ quantizer does) and raises built-in errors.

A separate method name rather than widening "gptq" itself: the registry refuses to replace a built-in method, and
stock transformers must not see a 6-bit "gptq" config it would refuse in one place and mis-handle in another.
"""

from __future__ import annotations

import functools
from typing import Any

from transformers import GPTQConfig, LlamaForCausalLM
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.quantizer_gptq import GptqHfQuantizer

SPECTRA_GPTQ_METHOD = "spectra_gptq"
SPECTRA_GPTQ_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)  # widths gptqmodel's torch kernel packs and runs
_ACCEPTED_BITS = 8  # a width GPTQConfig's and optimum's own checks accept, used while they run


@functools.cache
def gptq_quantizer_class() -> type:
    """optimum's GPTQQuantizer widened to 2..8 bits (a class made on first use: optimum is imported only here)."""
    try:
        from optimum.gptq import GPTQQuantizer
    except ImportError as error:
        raise ImportError(
            f"loading or writing a GPTQ QuantLM needs optimum and gptqmodel ({error}): pip install optimum gptqmodel"
        ) from error

    class SpectraGPTQQuantizer(GPTQQuantizer):
        """optimum's GPTQQuantizer accepting every width gptqmodel's torch kernel packs (2..8 bits).

        optimum refuses 5, 6 and 7 bits in `__init__` only; its quantization loop, packing and gptqmodel's
        TorchLinear handle them. The object is built at 8 bits, then set to the requested width.
        """

        def __init__(self, bits: int, **kwargs: Any) -> None:
            super().__init__(bits=_ACCEPTED_BITS, **kwargs)
            self.bits = bits
            self.quantizeConfig.bits = bits

    SpectraGPTQQuantizer.__qualname__ = SpectraGPTQQuantizer.__name__
    return SpectraGPTQQuantizer


class SpectraGPTQConfig(GPTQConfig):
    """GPTQConfig for any width 2..8 (`quant_method: "spectra_gptq"`); every other field means what it does there."""

    def __init__(self, bits: int, **kwargs: Any) -> None:
        kwargs.pop("quant_method", None)
        super().__init__(bits=bits, **kwargs)
        self.quant_method = SPECTRA_GPTQ_METHOD  # type: ignore[assignment]  # registered, not an enum member

    def post_init(self) -> None:
        if self.bits not in SPECTRA_GPTQ_BITS:
            raise ValueError(
                f"spectra_gptq quantizes to {SPECTRA_GPTQ_BITS[0]}..{SPECTRA_GPTQ_BITS[-1]} bits, not {self.bits}"
            )
        bits, self.bits = self.bits, _ACCEPTED_BITS
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
            raise ValueError(
                "spectra_gptq only loads QuantLMs; quantize a FloatLM with `spectra-hf quantize` "
                "(or spectra_hf.quantization.gptq.export_quantlms)"
            )
        self.optimum_quantizer = gptq_quantizer_class()(**quantization_config.to_dict_optimum())


class QuantLMForCausalLM(LlamaForCausalLM):
    """transformers' LlamaForCausalLM, unchanged: the class a spectra_gptq export's `auto_map` names, so that
    `trust_remote_code=True` imports this module (registering spectra_gptq) before the weights load."""


def register() -> None:
    """Register `spectra_gptq` with transformers (once per process; later calls, from either import of this file,
    do nothing)."""
    if SPECTRA_GPTQ_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(SPECTRA_GPTQ_METHOD)(SpectraGPTQConfig)
    if SPECTRA_GPTQ_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(SPECTRA_GPTQ_METHOD)(SpectraGPTQHfQuantizer)


QuantLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
register()

__all__ = [
    "SPECTRA_GPTQ_BITS",
    "SPECTRA_GPTQ_METHOD",
    "QuantLMForCausalLM",
    "SpectraGPTQConfig",
    "SpectraGPTQHfQuantizer",
    "gptq_quantizer_class",
    "register",
]
