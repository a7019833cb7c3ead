"""`spectra-hf`: one entry point, one module per command in spectra_hf/commands/.

Each command module defines `add_parser(subparsers)`, which registers its parser and sets `func(args) -> int`.
Command modules import heavy libraries (torch, transformers) inside `func`, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from spectra_hf import verbosity
from spectra_hf.errors import SpectraError

# Order here is the order in `spectra-hf --help`.
# Commands that never load gptqmodel: their start-up skips importing its logger (spectra_hf.verbosity).
LIGHT_COMMANDS = ("suite", "init", "info", "verify", "hub")
COMMANDS = (
    "suite", "init", "info", "verify", "convert", "train", "quantize", "publish", "release", "hub", "eval",
    "dynamics", "plot", "demo",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectra-hf",
        description="Spectra suite (TriLM, FloatLM, QuantLM) for the Hugging Face ecosystem.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show other libraries' logging and warnings (transformers, torch, gptqmodel, bitsandbytes, torchao); "
        "by default only their errors show",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"spectra_hf.commands.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The quiet settings last as long as the command: called in-process (a notebook, a test), it leaves the caller's
    # environment, loggers and warnings filters as they were.
    with verbosity.configure(verbose=args.verbose, gptqmodel=args.command not in LIGHT_COMMANDS):
        try:
            return int(args.func(args) or 0)
        except (SpectraError, OSError, ValueError) as error:
            if os.environ.get("SPECTRA_HF_DEBUG"):
                raise
            print(f"spectra-hf {args.command}: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"spectra-hf {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
