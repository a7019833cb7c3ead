"""`spectra-hf demo`: the whole pipeline, scaled down, offline: train, export, quantize, publish, load back,
evaluate."""

from __future__ import annotations

import argparse

from spectra_hf.demo import STAGES as _STAGES  # light: the module imports heavy libraries inside its stages


def _stages(value: str) -> list[str]:
    stages = [s for s in value.split(",") if s]
    unknown = [s for s in stages if s not in _STAGES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(_STAGES)}")
    return stages


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the main job end to end on this machine, offline, in minutes",
        description=(
            "Build a corpus and tokenizer from local text, train a scaled-down TriLM and FloatLM with SpectraTrainer "
            "(checkpoints included), export packed TriLM, quantize the FloatLM to QuantLMs, publish everything with "
            "model cards to a local Hub it starts, load the models back with from_pretrained(revision=...), "
            "generate a sample and print a table of sizes and perplexities against an untrained baseline. "
            "No network, no token."
        ),
        epilog=(
            f"stages, in order: {', '.join(_STAGES)}; each reads the previous stages' output from --workdir. A re-run "
            "reuses the stages an earlier run finished from the same inputs (their outputs checked by sha256) and "
            "resumes an interrupted training run from its newest complete checkpoint; --force runs them again."
        ),
    )
    parser.add_argument(
        "--workdir", default="spectra-demo", help="where everything is written (default: ./spectra-demo)"
    )
    parser.add_argument(
        "--stages",
        type=_stages,
        default=list(_STAGES),
        help="comma-separated stages to run (default: all), e.g. --stages publish,loadback",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="run every requested stage again (and train from scratch) even where an earlier run finished it",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a reduced run (smaller model, fewer steps, the 4-bit QuantLM only, fewer eval documents)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectra_hf.demo import DemoConfig, run_demo
    from spectra_hf.demo.run import describe_seconds

    config = DemoConfig.quick() if args.quick else None
    if config is None and "prepare" in args.stages:
        config = DemoConfig()
    result = run_demo(args.workdir, stages=args.stages, config=config, force=args.force)
    print(describe_seconds(result))
    return 0
