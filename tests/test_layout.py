"""The import paths users and published cards name keep working after the move into sub-packages (0.1 -> 0.2)."""

from __future__ import annotations

import importlib

import pytest

# Every name the 0.1 README, the published model cards and ARCHITECTURE.md told users to import, with its new home.
OLD_PUBLIC_NAMES = {
    "spectra_hf": ["TriLMConfig", "TriLMModel", "TriLMForCausalLM", "FloatLMConfig", "FloatLMModel",
                   "FloatLMForCausalLM", "SpectraTrainer", "TernaryLinear"],
    "spectra_hf.suite": ["config_for", "SuiteModel"],
    "spectra_hf.quant": ["load_quantlm", "FROM_PRETRAINED_BITS"],  # published QuantLM cards
    "spectra_hf.baselines": ["load_floatlm_bnb"],
    "spectra_hf.localhub": ["LocalHub", "Fault", "ROUTE_KINDS"],
    "spectra_hf.evaluation": ["perplexity", "load_perplexity_metric", "load_texts"],
    "spectra_hf.training": ["train", "SpectraTrainer"],
    "spectra_hf.training.lora": ["merge_lora_to_float"],
    "spectra_hf.modeling": ["TriLMForCausalLM", "FloatLMForCausalLM", "TernaryLinear"],
    "spectra_hf.cli": ["main"],
}
NEW_HOMES = {
    ("spectra_hf.quant", "load_quantlm"): "spectra_hf.quantization.gptq",
    ("spectra_hf.baselines", "load_floatlm_bnb"): "spectra_hf.quantization.bnb",
    ("spectra_hf.localhub", "LocalHub"): "spectra_hf.hub.localhub.server",
    ("spectra_hf.evaluation", "perplexity"): "spectra_hf.evaluation.text_perplexity",
}


@pytest.mark.parametrize(
    ("module", "name"), [(module, name) for module, names in OLD_PUBLIC_NAMES.items() for name in names]
)
def test_old_public_name_still_imports(module: str, name: str) -> None:
    value = getattr(importlib.import_module(module), name)
    assert value is not None
    home = NEW_HOMES.get((module, name))
    if home is not None:  # an alias, not a second implementation
        assert value is getattr(importlib.import_module(home), name)
