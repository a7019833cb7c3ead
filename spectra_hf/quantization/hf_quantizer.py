"""The `spectra_gptq` quantization method, as spectra-hf uses it: transformers loads the 5/6/7-bit QuantLMs its
GPTQConfig refuses.

The method itself (config class, quantizer, registration) is defined once, in `spectra_hf.modeling.quantlm_gptq`:
that file is also the remote code every spectra_gptq export carries, so `trust_remote_code=True` loads these
QuantLMs without spectra-hf. `import spectra_hf` registers it when transformers' quantizer registry loads
(`spectra_hf.auto_registration`); this module adds what only spectra-hf needs (choosing the loading kernel,
shipping the remote code with an export).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from spectra_hf.checkpoints.io import read_config
from spectra_hf.modeling import quantlm_gptq
from spectra_hf.modeling.quantlm_gptq import (
    SPECTRA_GPTQ_BITS,
    SPECTRA_GPTQ_METHOD,
    QuantLMForCausalLM,
    SpectraGPTQConfig,
    register,
)

REMOTE_CODE_FILE = Path(quantlm_gptq.__file__).name  # "quantlm_gptq.py", shipped next to the weights


def spectra_gptq_config(bits: int, **kwargs: Any) -> SpectraGPTQConfig:
    """A `quant_method: "spectra_gptq"` config (a GPTQConfig subclass), e.g. to choose the kernel:
    `from_pretrained(path, quantization_config=spectra_gptq_config(6, backend="torch"))`."""
    return SpectraGPTQConfig(bits=bits, **kwargs)


def remote_code_auto_map() -> dict[str, str]:
    """The `auto_map` of a spectra_gptq export's config.json: AutoModelForCausalLM -> the shipped module's class."""
    return {"AutoModelForCausalLM": f"{Path(REMOTE_CODE_FILE).stem}.{QuantLMForCausalLM.__name__}"}


def ship_remote_code(directory: Path) -> None:
    """Make a packed QuantLM at `directory` loadable with `trust_remote_code=True` where it needs spectra_gptq.

    A `quant_method: "spectra_gptq"` export gets the method's module (`REMOTE_CODE_FILE`) next to its weights and
    an `auto_map` in config.json naming its class; a plain "gptq" export (2/3/4/8 bits, which stock transformers
    loads) is left as it is. config.json is rewritten through a temporary file and a rename.
    """
    config = read_config(directory)
    if (config.get("quantization_config") or {}).get("quant_method") != SPECTRA_GPTQ_METHOD:
        return
    shutil.copyfile(quantlm_gptq.__file__, directory / REMOTE_CODE_FILE)
    config["auto_map"] = remote_code_auto_map()
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=directory, prefix=".config.json.", suffix=".tmp", delete=False
    ) as staged:
        json.dump(config, staged, indent=2, sort_keys=True)
        staged.write("\n")
    os.replace(staged.name, directory / "config.json")


__all__ = [
    "REMOTE_CODE_FILE",
    "SPECTRA_GPTQ_BITS",
    "SPECTRA_GPTQ_METHOD",
    "register",
    "remote_code_auto_map",
    "ship_remote_code",
    "spectra_gptq_config",
]
