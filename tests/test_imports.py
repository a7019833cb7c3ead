"""No module of the package imports another module's private (`_name`) names: what is shared is public and documented.

Read off the source (ast) of spectra_hf/, training/, cards/ and modeling/; imports from the standard library and
third-party packages are their owners' business and not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("spectra_hf", "training", "cards", "modeling")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(source: str) -> list[str]:
    """`from M import _x` with M first-party (spectra_hf.* or relative), and `m._x` where `m` is a first-party module
    bound by `import spectra_hf.M as m`."""
    tree = ast.parse(source)
    found, module_aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("spectra_hf")):
            found += [f"{node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}"
                      for alias in node.names if _is_private(alias.name)]
        elif isinstance(node, ast.Import):
            first_party = [alias for alias in node.names if alias.name.startswith("spectra_hf")]
            module_aliases |= {alias.asname or alias.name for alias in first_party}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            base = ast.unparse(node.value)
            if base in module_aliases:
                found.append(f"{node.lineno}: {base}.{node.attr}")
    return found


def test_no_private_names_cross_modules() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for folder in PACKAGE_DIRS
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line in private_imports(path.read_text(encoding="utf-8"))
    ]
    assert not found, "make these names public (and documented) or move the caller:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("from spectra_hf.hub.publish import _explain\n", 1),
        ("from .gptq import _eager, load_quantlm\n", 1),
        ("import spectra_hf.hub.publish as publish\npublish._explain\n", 1),
        ("from transformers.trainer_utils import _is_peft_model\n", 0),
        ("from spectra_hf.hub.publish import publish\nfrom spectra_hf import __version__\n", 0),
    ],
)
def test_the_check_flags_first_party_private_imports_only(source: str, flagged: int) -> None:
    assert len(private_imports(source)) == flagged
