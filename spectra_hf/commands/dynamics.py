"""`spectra-hf dynamics MODEL`: how a model's weights and loss change across its checkpoint revisions."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dynamics",
        help="checkpoint dynamics: ternary flips, sparsity, scales, weight norms and loss across revisions",
        description=(
            "Analyse the revisions of MODEL in step order: a local suite export (its checkpoints/step<N>/ and the "
            "final export) or a Hub repo with step<N> branches (downloaded one revision at a time; never more than "
            "two on disk). Per revision, decoder layer and projection: TriLM digit fractions (-1/0/+1), each scale "
            "shard and the share of weights that flipped since the previous revision (0<->+-1 and +1<->-1), counted "
            "on the packed bytes; FloatLM weight norms and relative change; with --text, loss and perplexity. "
            "Writes dynamics.csv, dynamics.parquet (one row per revision x layer x projection x statistic) and PNG "
            "figures (needs matplotlib: pip install \"spectra-hf[plot]\")."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="suite export directory (e.g. suite/TriLM_99M) or Hub repo id")
    parser.add_argument(
        "--revisions", nargs="+", metavar="REV", help="revisions to analyse (default: all), e.g. step100 main"
    )
    parser.add_argument("--text", metavar="FILE", help="text to score each revision on (loss, perplexity)")
    parser.add_argument("--max-documents", type=int, help="score only the first N documents of --text")
    parser.add_argument("--max-length", type=int, help="tokens per window for --text (default: the context length)")
    parser.add_argument("--out", default="dynamics", help="output directory (default: ./dynamics)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs already in --out")
    parser.add_argument("--no-figures", action="store_true", help="write the table only (no matplotlib needed)")
    parser.add_argument(
        "--endpoint", help="Hub endpoint, e.g. a local Hub http://127.0.0.1:PORT (default: HF_ENDPOINT)"
    )
    parser.add_argument("--token", help="Hub token (default: the usual huggingface_hub sources)")
    parser.add_argument(
        "--cache-dir", help="where Hub revisions are downloaded (default: a temporary directory, removed at the end)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectra_hf.analysis.dynamics import TABLE_STEM, checkpoint_dynamics, write_dynamics
    from spectra_hf.analysis.output import prepare_output_dir, write_table

    if not args.no_figures:
        from spectra_hf.analysis.figures import require_matplotlib

        require_matplotlib()  # before the analysis, not after it
    frame = checkpoint_dynamics(
        args.model,
        revisions=args.revisions,
        text=args.text,
        max_documents=args.max_documents,
        max_length=args.max_length,
        endpoint=args.endpoint,
        token=args.token,
        cache_dir=args.cache_dir,
    )
    if args.no_figures:
        names = [f"{TABLE_STEM}.csv", f"{TABLE_STEM}.parquet"]
        written = write_table(frame, prepare_output_dir(args.out, names, overwrite=args.overwrite), TABLE_STEM)
    else:
        written = write_dynamics(frame, args.out, overwrite=args.overwrite)
    revisions = list(dict.fromkeys(frame["revision"]))
    print(f"{args.model}: {len(revisions)} revisions ({', '.join(revisions)}), {len(frame)} rows")
    for path in written:
        print(f"  {path}")
    return 0
