"""`spectra-hf verify DIR`: check every tensor of a checkpoint against the sha256 digest its file records."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check a checkpoint's tensors against the sha256 digests recorded in its safetensors files",
        description=(
            "Check a checkpoint directory: complete and consistent (as `info` does), and every tensor's bytes "
            "against the sha256 digest that `save_pretrained(weight_format='packed')` and `convert` record in the "
            "safetensors metadata. Exit 0 when every recorded digest matches (a checkpoint without digests: says "
            "'no digests recorded'); non-zero naming the first tensor that does not match."
        ),
    )
    parser.add_argument("path", help="checkpoint directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectra_hf.checkpoints.verify import verify_checkpoint

    print(verify_checkpoint(args.path).summary())
    return 0
