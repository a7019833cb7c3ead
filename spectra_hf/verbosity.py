"""How much of other libraries' logging a `spectra-hf` command shows: quiet by default, everything with `-v`.

A command's own output (its stage lines, tables, warnings about the user's input) comes from spectra_hf and is not
touched. What is silenced by default is what the user did not ask to see: transformers' and torch's advice to
library authors, gptqmodel's banner and INFO/WARN lines, torchao's and bitsandbytes' start-up messages, and
third-party FutureWarning / DeprecationWarning / UserWarning lines. Errors (ERROR level and above) always show.
Called by the CLI before any heavy import, so the settings are in place when those libraries configure themselves;
environment variables carry the transformers setting into the processes a command starts (the demo's load-back).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import warnings

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
)


def configure(*, verbose: bool, gptqmodel: bool = True) -> None:
    """Show third-party logging and warnings (`verbose`), or only their errors (the default). `gptqmodel=False`
    (commands that never load it: `hub`, `suite`, ...) skips importing logbar, its logger, to keep start-up light."""
    if verbose:
        return
    # transformers reads this when it configures its root logger; processes started by the command inherit it.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    root = logging.getLogger()
    if not root.handlers and logging.lastResort is not None:
        # tokenicer (imported by gptqmodel) calls logging.basicConfig(level=INFO), which would print every INFO
        # record of every library, spectra_hf's own included; basicConfig does nothing once the root logger has a
        # handler: give it the one Python falls back to anyway (stderr, WARNING and above, the message alone).
        root.addHandler(logging.lastResort)
    if gptqmodel:
        _quiet_logbar()
    # Third-party warnings are hidden; spectra_hf's own stay (the later filter is consulted first).
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("default", module=r"spectra_hf(\.|$)")


def _quiet_logbar() -> None:
    """gptqmodel logs (banner included) through logbar's shared LogBar, which sets itself to INFO when it is first
    created: create it now, at ERROR, so gptqmodel's later calls find it so."""
    if importlib.util.find_spec("logbar") is None:
        return
    # Importing logbar, and creating its logger, print an empty line to stdout; a command's stdout is its own
    # output, so that line goes nowhere.
    with contextlib.redirect_stdout(io.StringIO()):
        from logbar import LogBar

        LogBar.shared().setLevel(logging.ERROR)
