"""The import paths the README and the model cards name exist, and the one kept alias says where its names moved.

`spectra_hf.quant` stays because QuantLM cards published before the sub-package layout say
`from spectra_hf.quant import load_quantlm`; importing it raises a FutureWarning naming the new path and the version
that removes it. Nothing else of the flat layout is kept: no README or card names it.
"""

from __future__ import annotations

import importlib
import sys

import pytest

# What the README's examples and the cards' quickstarts (cards/render.py) import.
PUBLIC_NAMES = {
    "spectra_hf": ["TriLMConfig", "TriLMModel", "TriLMForCausalLM", "FloatLMConfig", "FloatLMModel",
                   "FloatLMForCausalLM", "SpectraTrainer", "TernaryLinear"],
    "spectra_hf.suite": ["config_for", "SuiteModel"],
    "spectra_hf.quantization": ["load_quantlm", "load_floatlm_bnb"],
    "spectra_hf.hub.localhub": ["LocalHub", "Fault", "ROUTE_KINDS"],
    "spectra_hf.evaluation": ["perplexity", "load_perplexity_metric", "load_texts"],
    "spectra_hf.training": ["train", "SpectraTrainer"],
    "spectra_hf.training.lora": ["merge_lora_to_float"],
    "spectra_hf.modeling": ["TriLMForCausalLM", "FloatLMForCausalLM", "TernaryLinear"],
    "spectra_hf.cli": ["main"],
}


@pytest.mark.parametrize(("module", "name"), [(m, n) for m, names in PUBLIC_NAMES.items() for n in names])
def test_public_name_imports(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


def test_the_quant_alias_warns_with_the_new_path_and_the_removal_version() -> None:
    from spectra_hf.quantization import gptq

    sys.modules.pop("spectra_hf.quant", None)  # the warning is raised when the module runs, once per process
    with pytest.warns(FutureWarning, match=r"spectra_hf\.quantization.*removed in spectra-hf 0\.3\.0"):
        quant = importlib.import_module("spectra_hf.quant")
    assert quant.load_quantlm is gptq.load_quantlm  # an alias, not a second implementation
    assert quant.FROM_PRETRAINED_BITS is gptq.FROM_PRETRAINED_BITS


@pytest.mark.parametrize("module", ["spectra_hf.baselines", "spectra_hf.localhub"])
def test_the_unnamed_flat_modules_are_gone(module: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(module)


def test_every_package_folder_is_in_the_wheel():
    """setuptools installs only the packages pyproject.toml lists: a new sub-package missing there imports from a
    checkout but not from the wheel (.ci/run tests the wheel)."""
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    settings = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {Path(folder): package for package, folder in settings["package-dir"].items()}
    found = set()
    for folder, package in folders.items():
        for init in (root / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(root / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == set(settings["packages"]), found ^ set(settings["packages"])
