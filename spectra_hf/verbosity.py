"""How much of other libraries' logging a `spectra-hf` command shows: quiet by default, everything with `-v`.

A command's own output (its stage lines, tables, warnings about the user's input) comes from spectra_hf and is not
touched. What is silenced by default is what the user did not ask to see: transformers' and torch's advice to
library authors, gptqmodel's banner and INFO/WARN lines, torchao's and bitsandbytes' start-up messages, and
third-party FutureWarning / DeprecationWarning / UserWarning lines. Errors (ERROR level and above) always show.
The CLI calls `configure` before any heavy import, so the settings are in place when those libraries configure
themselves; environment variables carry the transformers setting into the processes a command starts (the demo's
load-back). The settings last as long as the command: `with configure(...)` puts the environment, the loggers and
the warnings filters back as they were when it ends, so that a command called in-process (a notebook, a test)
leaves the caller's logging as it found it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import warnings
from collections.abc import Iterable

# HTTP clients that log one INFO line per request once something turns INFO logging on (tokenicer, imported by
# gptqmodel, calls logging.basicConfig(level=INFO)).
HTTP_LOGGERS = ("httpx", "httpx2")
# Loggers of libraries that log at import or on routine calls; ERROR and above still show.
QUIET_LOGGERS = (
    "accelerate",
    "bitsandbytes",  # "Failed to load CPU gemm_4bit_forward from kernels-community ..." on AVX512-BF16 CPUs
    "datasets",
    "gptqmodel",
    "kernels",
    "optimum",
    "peft",
    "torch.utils._pytree",  # torchao registering enums with torch.compile
    "torchao",  # "Failed to load ... .so" / "Skipping import of cpp extensions" with torch 2.13
    "transformers",
    *HTTP_LOGGERS,
)


def configure(*, verbose: bool, gptqmodel: bool = True) -> contextlib.ExitStack:
    """Show third-party logging and warnings (`verbose`), or only their errors (the default). `gptqmodel=False`
    (commands that never load it: `hub`, `suite`, ...) skips importing logbar, its logger, to keep start-up light.

    The settings take effect at once; the returned stack undoes them when closed: use `with configure(...):` around
    the command, so that they end with it, whether it returns or raises."""
    if verbose:
        return contextlib.ExitStack()
    with contextlib.ExitStack() as stack:  # a setting that fails to apply undoes the ones before it
        _quiet(stack, gptqmodel=gptqmodel)
        return stack.pop_all()


def _quiet(stack: contextlib.ExitStack, *, gptqmodel: bool) -> None:
    """configure's quiet settings, each undone by `stack`."""
    # transformers reads this when it configures its root logger; processes started by the command inherit it.
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        stack.callback(os.environ.pop, "TRANSFORMERS_VERBOSITY", None)
    stack.enter_context(quiet_loggers(QUIET_LOGGERS, level=logging.ERROR))
    root = logging.getLogger()
    if not root.handlers and logging.lastResort is not None:
        # tokenicer (imported by gptqmodel) calls logging.basicConfig(level=INFO), which would print every INFO
        # record of every library, spectra_hf's own included; basicConfig does nothing once the root logger has a
        # handler: give it the one Python falls back to anyway (stderr, WARNING and above, the message alone).
        root.addHandler(logging.lastResort)
        stack.callback(root.removeHandler, logging.lastResort)
    if gptqmodel:
        _quiet_logbar(stack)
    # Third-party warnings are hidden; spectra_hf's own stay (the later filter is consulted first). catch_warnings
    # restores the filters (and warnings.showwarning) as they were.
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("default", module=r"spectra_hf(\.|$)")


def quiet_loggers(names: Iterable[str], *, level: int) -> contextlib.ExitStack:
    """Raise each named logger's level to at least `level` (one already stricter keeps its own), at once; closing
    the returned stack (`with quiet_loggers(...):`) puts the levels back."""
    stack = contextlib.ExitStack()
    for name in names:
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(max(logger.level, level))
    return stack


def quiet_http_logs() -> contextlib.ExitStack:
    """HTTP clients at WARNING, whatever the verbosity: with `-v`, or when the demo runs from Python, gptqmodel's
    INFO logging would otherwise print one line per request (the demo's publish and load-back make hundreds)."""
    return quiet_loggers(HTTP_LOGGERS, level=logging.WARNING)


def _quiet_logbar(stack: contextlib.ExitStack) -> None:
    """gptqmodel logs (banner included) through logbar's shared LogBar, which sets itself to INFO when it is first
    created: create it now, at ERROR, so gptqmodel's later calls find it so (`stack` puts its level back)."""
    if importlib.util.find_spec("logbar") is None:
        return
    # Importing logbar, and creating its logger, print an empty line to stdout; a command's stdout is its own
    # output, so that line goes nowhere.
    with contextlib.redirect_stdout(io.StringIO()):
        from logbar import LogBar

        shared = LogBar.shared()
    stack.callback(shared.setLevel, shared.level)
    shared.setLevel(logging.ERROR)
