"""Every error the package raises for a user to fix is typed by kind (spectra_hf.errors), read off the source.

The walk covers spectra_hf/, training/ and cards/. Out of it: modeling/ (remote code, which raises built-in
ValueError / OSError because it cannot import spectra_hf) and the local Hub server (spectra_hf/hub/localhub/), whose
errors are HTTP answers (`ErrorResponse`) for a client, not exceptions for a caller.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

from spectra_hf import errors

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("spectra_hf", "training", "cards")
SERVER_DIR = ROOT / "spectra_hf" / "hub" / "localhub"

TYPED_ERRORS = {
    name
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, errors.SpectraError) and value is not errors.SpectraError
}
BUILTIN_EXCEPTIONS = {
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
}
# Protocols that name their own exception: a module __getattr__ must raise AttributeError, an argparse `type=`
# callable ArgumentTypeError (argparse turns it into a usage message).
PROTOCOL_ERRORS = {("__getattr__", "AttributeError"), (None, "ArgumentTypeError")}


def _package_files() -> list[Path]:
    files = [path for folder in PACKAGE_DIRS for path in sorted((ROOT / folder).rglob("*.py"))]
    return [path for path in files if SERVER_DIR not in path.parents]


def _raised_class(node: ast.Raise) -> str | None:
    """The name of the class a `raise X(...)` / `raise X` names, or None (a re-raise, a factory call's result)."""
    target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    if isinstance(target, ast.Name):
        name = target.id
    elif isinstance(target, ast.Attribute):
        name = target.attr
    else:
        return None
    return name if name[:1].isupper() else None  # lower case: a variable being re-raised or an error factory


def _raise_sites(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, raised class name, enclosing function name) of each raise that names a class in `path`."""
    sites = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Raise) and child.exc is not None:
                name = _raised_class(child)
                if name is not None:
                    sites.append((child.lineno, name, function))
            visit(child, function)

    visit(ast.parse(path.read_text(encoding="utf-8")), None)
    return sites


def _is_untyped(name: str, function: str | None) -> bool:
    """A bare SpectraError, or a built-in exception outside the protocols that require one."""
    if name in TYPED_ERRORS or (function, name) in PROTOCOL_ERRORS or (None, name) in PROTOCOL_ERRORS:
        return False
    return name == "SpectraError" or name in BUILTIN_EXCEPTIONS


def _untyped_raises() -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: raise {name}"
        for path in _package_files()
        for line, name, function in _raise_sites(path)
        if _is_untyped(name, function)
    ]


def test_every_raise_is_typed_by_kind() -> None:
    """No bare SpectraError (a caller cannot catch it by kind) and no built-in exception where a typed one is meant."""
    untyped = _untyped_raises()
    assert not untyped, "raise a ConfigError, DataError, CheckpointError, ... instead:\n" + "\n".join(untyped)


def test_no_bare_spectra_error_is_made_anywhere() -> None:
    """Error factories (functions that build an error for the caller to raise) are held to the same rule."""
    made = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _package_files()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "SpectraError"
    ]
    assert not made, "build a typed error (ConfigError, HubError, ...) instead:\n" + "\n".join(made)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    raise SpectraError('x')\n", ["raise SpectraError"]),
        ("def f():\n    raise ValueError('x')\n", ["raise ValueError"]),
        ("def f():\n    raise ConfigError('x')\n", []),
        ("def __getattr__(name):\n    raise AttributeError(name)\n", []),
        ("def f():\n    raise AttributeError('x')\n", ["raise AttributeError"]),
        ("def f():\n    try:\n        g()\n    except OSError as error:\n        raise error\n", []),
    ],
)
def test_raise_walk_reports_what_it_should(source: str, expected: list[str], tmp_path: Path) -> None:
    """The walk itself: it flags bare and built-in raises and lets typed ones, protocols and re-raises pass."""
    path = tmp_path / "module.py"
    path.write_text(source, encoding="utf-8")
    flagged = [f"raise {name}" for _, name, function in _raise_sites(path) if _is_untyped(name, function)]
    assert flagged == expected
