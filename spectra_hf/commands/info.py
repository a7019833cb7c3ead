"""`spectra-hf info PATH`: what a checkpoint is (family, size, format, parameters, ternary statistics)."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a checkpoint: family, suite size, format (latent/packed/unpacked release/float), stats",
        description=(
            "Describe a checkpoint directory from its config.json and safetensors headers: family, suite size "
            "(matched by architecture), storage format, parameter count and, for TriLMs, bits per ternary weight "
            "and the share of -1/0/+1 digits and the scale range (this reads the ternary tensors, one at a time)."
        ),
    )
    parser.add_argument("path", help="checkpoint directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-stats", action="store_true", help="read headers only (skip the ternary statistics)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectra_hf.checkpoints.info import describe_checkpoint

    info = describe_checkpoint(args.path, stats=not args.no_stats, progress=not args.json)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(map(len, info))
    for key, value in info.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        shown = f"{value:.4f}" if isinstance(value, float) else shown
        shown = "- (not a suite architecture)" if value is None and key in ("size", "name") else shown
        print(f"{key:<{width}}  {shown}")
    return 0
