"""spectra-hf: the Spectra suite (TriLM, FloatLM, QuantLM; arXiv 2407.12327) as first-class transformers models.

`import spectra_hf` registers the model types `trilm` and `floatlm` with AutoConfig, AutoModel and
AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from spectra_hf.modeling import (
    FloatLMConfig,
    FloatLMForCausalLM,
    FloatLMModel,
    TernaryLinear,
    TriLMConfig,
    TriLMForCausalLM,
    TriLMModel,
)

__version__ = "0.1.0"

for _config, _model, _causal_lm in (
    (TriLMConfig, TriLMModel, TriLMForCausalLM),
    (FloatLMConfig, FloatLMModel, FloatLMForCausalLM),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForCausalLM.register(_config, _causal_lm, exist_ok=True)


def __getattr__(name: str):
    # SpectraTrainer pulls in the Trainer stack (accelerate, datasets); import it only when asked for.
    if name == "SpectraTrainer":
        from spectra_hf.training import SpectraTrainer

        return SpectraTrainer
    raise AttributeError(f"module 'spectra_hf' has no attribute {name!r}")


__all__ = [
    "FloatLMConfig",
    "FloatLMForCausalLM",
    "FloatLMModel",
    "SpectraTrainer",
    "TernaryLinear",
    "TriLMConfig",
    "TriLMForCausalLM",
    "TriLMModel",
]
