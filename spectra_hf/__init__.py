"""spectra-hf: the Spectra suite (TriLM, FloatLM, QuantLM; arXiv 2407.12327) as first-class transformers models.

`import spectra_hf` registers the model types `trilm` and `floatlm` with AutoConfig, AutoModel,
AutoModelForCausalLM and the task heads (AutoModelForSequenceClassification, ...ForTokenClassification,
...ForQuestionAnswering). It imports neither torch nor transformers itself: the registration runs when
transformers' Auto classes load (see `spectra_hf.auto_registration`), and the classes below are imported on first
use, so the `spectra-hf` command line starts without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spectra_hf.auto_registration import install as _install_auto_registration

__version__ = "0.1.0"

_install_auto_registration()

# Public name -> module that defines it (imported on first access).
_LAZY_EXPORTS = {
    "FloatLMConfig": "spectra_hf.modeling",
    "FloatLMForCausalLM": "spectra_hf.modeling",
    "FloatLMModel": "spectra_hf.modeling",
    "TernaryLinear": "spectra_hf.modeling",
    "TriLMConfig": "spectra_hf.modeling",
    "TriLMForCausalLM": "spectra_hf.modeling",
    "TriLMModel": "spectra_hf.modeling",
    "FloatLMForQuestionAnswering": "spectra_hf.modeling.heads",
    "FloatLMForSequenceClassification": "spectra_hf.modeling.heads",
    "FloatLMForTokenClassification": "spectra_hf.modeling.heads",
    "TriLMForQuestionAnswering": "spectra_hf.modeling.heads",
    "TriLMForSequenceClassification": "spectra_hf.modeling.heads",
    "TriLMForTokenClassification": "spectra_hf.modeling.heads",
    # SpectraTrainer pulls in the Trainer stack (accelerate, datasets).
    "SpectraTrainer": "spectra_hf.training",
}

if TYPE_CHECKING:
    from spectra_hf.modeling import (
        FloatLMConfig,
        FloatLMForCausalLM,
        FloatLMModel,
        TernaryLinear,
        TriLMConfig,
        TriLMForCausalLM,
        TriLMModel,
    )
    from spectra_hf.modeling.heads import (
        FloatLMForQuestionAnswering,
        FloatLMForSequenceClassification,
        FloatLMForTokenClassification,
        TriLMForQuestionAnswering,
        TriLMForSequenceClassification,
        TriLMForTokenClassification,
    )
    from spectra_hf.training import SpectraTrainer


def __getattr__(name: str) -> Any:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spectra_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_EXPORTS])


__all__ = [
    "FloatLMConfig",
    "FloatLMForCausalLM",
    "FloatLMForQuestionAnswering",
    "FloatLMForSequenceClassification",
    "FloatLMForTokenClassification",
    "FloatLMModel",
    "SpectraTrainer",
    "TernaryLinear",
    "TriLMConfig",
    "TriLMForCausalLM",
    "TriLMForQuestionAnswering",
    "TriLMForSequenceClassification",
    "TriLMForTokenClassification",
    "TriLMModel",
]
