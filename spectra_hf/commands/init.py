"""`spectra-hf init`: a randomly initialized suite model, saved with save_pretrained."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "init",
        help="save a randomly initialized suite model (full size or --tiny)",
        description=(
            "Build a randomly initialized TriLM or FloatLM of a suite size and save it with save_pretrained. "
            "QuantLM names give their FloatLM (quantize it with `spectra-hf quantize`)."
        ),
    )
    parser.add_argument("name", help="suite model name, e.g. TriLM_99M or FloatLM_1.1B (see `spectra-hf suite`)")
    parser.add_argument("out", help="output directory (must not exist, or be empty)")
    parser.add_argument(
        "--tiny",
        "--scale-down",
        action="store_true",
        help="a 2-layer, hidden-64/96 model with the same family and scale-shard count (for tests and demos)",
    )
    parser.add_argument("--vocab-size", type=int, help="override the vocabulary size (default: 50304, tiny: 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    from spectra_hf.checkpoints.exports import atomic_directory
    from spectra_hf.errors import OutputExistsError
    from spectra_hf.suite import config_for, get_model

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} exists and is not empty: choose a new output directory")
    overrides = {} if args.vocab_size is None else {"vocab_size": args.vocab_size}
    config = config_for(args.name, tiny=args.tiny, **overrides)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    with atomic_directory(out) as staging:
        model.save_pretrained(staging)
    params = sum(p.numel() for p in model.parameters())
    print(f"saved a random {get_model(args.name).name} ({config.model_type}, {params:,} parameters) to {out}")
    return 0
