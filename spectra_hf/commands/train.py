"""`spectra-hf train RECIPE [--key value ...]`: train a suite model from a recipe (single process or launched)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a TriLM / FloatLM from a recipe with the paper's schedules (SpectraTrainer)",
        description=(
            "Train a suite model from a recipe: a YAML file, or a suite model name for its bundled recipe "
            "(training/recipes/<name>.yaml). Any recipe key can be overridden as `--key value` after the recipe; "
            "`spectra-hf train RECIPE --help` lists the keys. Multi-process: run the same command under "
            "`torchrun --nproc_per_node N -m spectra_hf.cli train ...` or `accelerate launch --config_file "
            "training/recipes/launch/<config>.yaml -m spectra_hf.cli train ...`."
        ),
        epilog=(
            "example: spectra-hf train TriLM_99M --tiny true --data_files corpus.txt --tokenizer ./tok --max_steps 300"
        ),
    )
    parser.add_argument("recipe", help="recipe YAML path or suite model name (e.g. TriLM_99M)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="recipe keys to override: --key value ...")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectra_hf.training import train
    from spectra_hf.training.arguments import recipe_parser

    if "-h" in args.overrides or "--help" in args.overrides:
        recipe_parser().print_help()
        return 0
    result = train(args.recipe, overrides=args.overrides)
    if result.trainer.args.should_save:
        if "train_loss" in result.metrics:
            print(f"trained {result.trainer.state.global_step} steps, train_loss {result.metrics['train_loss']:.4f}")
        else:  # resumed from a checkpoint already at max_steps
            print(f"the run was already at step {result.trainer.state.global_step} (max_steps): nothing to train")
        print(f"checkpoints: {result.output_dir}")
        if result.export_dir is not None:
            print(f"release export: {result.export_dir}")
    return 0
