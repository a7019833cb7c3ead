"""`spectra-hf suite`: list the 54 models of the Spectra suite."""

from __future__ import annotations

import argparse
import json

from spectra_hf.suite import FAMILIES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "suite",
        help="list the 54 suite models (name, family, size, bits, parameters, size in bits)",
        description="List the 54 Spectra models: 9 sizes x (TriLM, FloatLM, QuantLM at 3/4/6/8 bits).",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list (one object per model)")
    parser.add_argument("--family", choices=FAMILIES, help="only this family")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectra_hf.suite import all_models

    models = [m for m in all_models() if args.family in (None, m.family)]
    if args.json:
        print(json.dumps([m.as_row() for m in models], indent=2))
        return 0
    header = f"{'name':<20} {'family':<8} {'size':>5} {'bits':>4} {'params':>14} {'size (Gbit)':>12} {'MP':>3}"
    print(header)
    print("-" * len(header))
    for m in models:
        bits = "-" if m.bits is None else str(m.bits)
        print(
            f"{m.name:<20} {m.family:<8} {m.size:>5} {bits:>4} {m.params:>14,} {m.size_bits / 1e9:>12.3f} "
            f"{m.spec.model_parallel:>3}"
        )
    return 0
