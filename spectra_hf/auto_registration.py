"""Registration of `trilm` / `floatlm` with transformers' Auto classes, done when those classes load.

`import spectra_hf` must register the model types with AutoConfig, AutoModel, AutoModelForCausalLM and the task
heads (ARCHITECTURE.md), and `spectra-hf --help` must not import torch. transformers' Auto classes import torch
themselves (`configuration_auto` -> `configuration_utils` -> torch), so registering at `import spectra_hf` would cost
every command the torch start-up (~10 s, ~400 MB). Instead `install()` registers once transformers' own
`transformers.models.auto.configuration_auto` / `modeling_auto` modules have loaded (at once when they already
have): nothing can look a model type up in an Auto class before those modules exist, so after `import spectra_hf`
every lookup sees trilm and floatlm, whichever order the imports come in.

Registering imports `spectra_hf.modeling` (and `spectra_hf.modeling.quantlm_gptq`, the spectra_gptq quantization
method), which import transformers modules themselves, so it must not run while a transformers module is still
half-imported (the auto modules often load in the middle of another transformers import). The import hook therefore
counts transformers modules being executed and registers when the outermost one finishes, and waits for
`spectra_hf.modeling` or `quantlm_gptq` when that is the import under way.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

CONFIGURATION_AUTO = "transformers.models.auto.configuration_auto"
MODELING_AUTO = "transformers.models.auto.modeling_auto"
QUANTIZERS_AUTO = "transformers.quantizers.auto"  # the quantization-method registry (spectra_gptq)
SPECTRA_MODELING = "spectra_hf.modeling"  # `import spectra_hf.modeling` loads the auto modules halfway through itself
SPECTRA_GPTQ = "spectra_hf.modeling.quantlm_gptq"  # defines spectra_gptq; may load the quantizer registry itself
WATCHED = (CONFIGURATION_AUTO, MODELING_AUTO, QUANTIZERS_AUTO, SPECTRA_MODELING, SPECTRA_GPTQ)

# The Auto classes each Spectra model class is registered with: (class name in spectra_hf.modeling, Auto classes).
# The task heads are transformers' Llama heads on the Spectra bodies (modeling/heads.py).
MODEL_AUTO_CLASSES: dict[str, tuple[str, ...]] = {
    "Model": ("AutoModel",),
    "ForCausalLM": ("AutoModelForCausalLM",),
    "ForSequenceClassification": ("AutoModelForSequenceClassification",),
    "ForTokenClassification": ("AutoModelForTokenClassification",),
    "ForQuestionAnswering": ("AutoModelForQuestionAnswering",),
}
FAMILIES = ("TriLM", "FloatLM")

_loaded: set[str] = set()  # watched modules whose code has run to the end
_registered: set[str] = set()
_registering = False
_importing_depth = 0  # transformers / watched modules whose code is running now (nested imports)


def _register_configs() -> None:
    from transformers import AutoConfig

    from spectra_hf import modeling

    for family in FAMILIES:
        config = getattr(modeling, f"{family}Config")
        AutoConfig.register(config.model_type, config, exist_ok=True)


def _register_models() -> None:
    import transformers

    from spectra_hf import modeling
    from spectra_hf.modeling import heads

    for family in FAMILIES:
        config = getattr(modeling, f"{family}Config")
        for suffix, auto_names in MODEL_AUTO_CLASSES.items():
            name = f"{family}{suffix}"
            model_class = getattr(modeling, name, None) or getattr(heads, name)
            for auto_name in auto_names:
                getattr(transformers, auto_name).register(config, model_class, exist_ok=True)


def _register_quantization_method() -> None:
    from spectra_hf.modeling.quantlm_gptq import register  # importing it registers; the call says so

    register()


_STAGES: tuple[tuple[str, Callable[[], None]], ...] = (
    (CONFIGURATION_AUTO, _register_configs),
    (MODELING_AUTO, _register_models),
    (QUANTIZERS_AUTO, _register_quantization_method),
)


def register_loaded() -> None:
    """Register with every Auto module that has loaded (idempotent; safe to call from inside an import)."""
    global _registering
    if _registering or _importing_depth:  # the outer call (or the outermost import) picks it up
        return
    _registering = True
    try:
        progressed = True
        while progressed:
            progressed = False
            for module_name, register in _STAGES:
                if module_name in _loaded and module_name not in _registered:
                    register()
                    _registered.add(module_name)
                    progressed = True
    finally:
        _registering = False


class _RegisterAfterExec(importlib.abc.Loader):
    """Runs the wrapped loader, then `register_loaded`; everything else (get_source, ...) is the wrapped loader's."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader, self._name = loader, name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        global _importing_depth
        _importing_depth += 1
        try:
            self._loader.exec_module(module)
        finally:
            _importing_depth -= 1
        if self._name in WATCHED:
            _loaded.add(self._name)
        if _loaded - _registered:
            register_loaded()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _AutoModulesFinder(importlib.abc.MetaPathFinder):
    """Finds transformers' modules and spectra_hf.modeling as the finders after it would, with a loader that
    registers after the outermost of them has run."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in WATCHED and not fullname.startswith("transformers."):
            return None
        later = sys.meta_path[sys.meta_path.index(self) + 1 :] if self in sys.meta_path else []
        for finder in later:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterExec(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Register now with the auto modules already loaded, and with the others when they load."""
    if not any(isinstance(finder, _AutoModulesFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AutoModulesFinder())
    _loaded.update(name for name in WATCHED if name in sys.modules)
    register_loaded()
