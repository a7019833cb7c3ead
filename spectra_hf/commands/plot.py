"""`spectra-hf plot suite RESULTS...`: the paper's headline comparisons from evaluation results."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="figures: `plot suite` draws metrics against size in bits and parameters per family",
        description="Figures from evaluation results (needs matplotlib: pip install \"spectra-hf[plot]\").",
    )
    kinds = parser.add_subparsers(dest="plot_kind", metavar="KIND", required=True)
    suite = kinds.add_parser(
        "suite",
        help="each metric against size in bits and parameter count, one line per family (log x)",
        description=(
            "Read evaluation results: results.json files of `spectra-hf eval`, model cards (README.md with a "
            "model-index), folders holding either (searched recursively: *results.json, README.md) and, with --org, "
            "the cards of an org's TriLM/FloatLM/QuantLM repos on the Hub. Draw one figure per metric: the metric "
            "against the model's size in bits and against its parameter count (both from the suite registry, log "
            "x), one line per family (QuantLM: one per bit width); write it as <metric>.png with the data behind it "
            "as <metric>.csv, and every row read as results.csv."
        ),
    )
    suite.add_argument("results", nargs="*", metavar="RESULTS", help="results.json files, cards, or folders of them")
    suite.add_argument("--org", help="also read the model cards of this Hub org's suite repos")
    suite.add_argument("--endpoint", help="Hub endpoint for --org, e.g. http://127.0.0.1:PORT (default: HF_ENDPOINT)")
    suite.add_argument("--token", help="Hub token (default: the usual huggingface_hub sources)")
    suite.add_argument("--out", default="suite-figures", help="output directory (default: ./suite-figures)")
    suite.add_argument("--overwrite", action="store_true", help="replace outputs already in --out")
    suite.set_defaults(func=run_suite)


def run_suite(args: argparse.Namespace) -> int:
    from spectra_hf.analysis.figures import require_matplotlib
    from spectra_hf.analysis.suite_results import collect_results, plot_suite
    from spectra_hf.errors import ConfigError

    if not args.results and args.org is None:
        raise ConfigError("nothing to plot: pass results.json files, cards or folders, and / or --org ORG")
    require_matplotlib()
    table = collect_results(args.results, org=args.org, endpoint=args.endpoint, token=args.token)
    written = plot_suite(table, args.out, overwrite=args.overwrite)
    print(f"{table['model'].nunique()} models, {table['metric'].nunique()} metrics")
    for path in written:
        print(f"  {path}")
    return 0
