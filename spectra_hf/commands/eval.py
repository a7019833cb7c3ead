"""`spectra-hf eval`: perplexity / bits per byte and lm-evaluation-harness tasks on a local export or Hub model."""

from __future__ import annotations

import argparse
import json


def _split_tasks(value: str) -> list[str]:
    return [task for task in value.split(",") if task]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model: perplexity on text, lm-eval tasks (zero-shot, as the paper)",
        description=(
            "Evaluate MODEL (an export directory or a Hub repo id) with perplexity and bits per byte on text "
            "(--perplexity-data) and / or lm-evaluation-harness tasks (--tasks). Results are printed and, with "
            "--output, written as JSON whose model_index rows feed the model cards."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="export directory or Hub repo id, e.g. SpectraSuite/FloatLM_99M")
    parser.add_argument("--revision", help="branch / tag / commit (Hub), or step<N> of a local export's checkpoints")
    parser.add_argument(
        "--endpoint", help="Hub endpoint, e.g. a local Hub http://127.0.0.1:PORT (default: HF_ENDPOINT)"
    )
    parser.add_argument("--token", help="Hub token (default: the usual huggingface_hub sources)")
    parser.add_argument(
        "--tasks",
        type=_split_tasks,
        default=[],
        help="comma-separated lm-eval tasks: the preset 'spectra' (the paper's 13 zero-shot tasks), task names, "
        "or task files (.yaml/.json; local data_files run offline)",
    )
    parser.add_argument(
        "--perplexity-data",
        metavar="SOURCE",
        help="text to score: a .txt (one document per line), .json/.jsonl/.csv/.parquet file, a save_to_disk "
        "directory, or a datasets name",
    )
    parser.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    parser.add_argument("--split", help="dataset split for --perplexity-data")
    parser.add_argument("--max-documents", type=int, help="score only the first N documents")
    parser.add_argument("--max-length", type=int, help="tokens per window (default: the model's context length)")
    parser.add_argument("--stride", type=int, help="tokens between window starts (default: --max-length minus 1)")
    parser.add_argument("--batch-size", type=int, default=1, help="windows / requests per forward pass (default 1)")
    parser.add_argument("--num-fewshot", type=int, default=0, help="few-shot examples for lm-eval tasks (default 0)")
    parser.add_argument("--limit", type=float, help="lm-eval: examples per task (a fraction if < 1); for smoke tests")
    parser.add_argument("--output", metavar="FILE", help="write the results JSON here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectra_hf.errors import ConfigError
    from spectra_hf.evaluation.harness import resolve_tasks, run_harness
    from spectra_hf.evaluation.pretrained import load_pretrained
    from spectra_hf.evaluation.results import build_results, write_results
    from spectra_hf.evaluation.text_perplexity import load_texts, perplexity

    if not args.tasks and not args.perplexity_data:
        raise ConfigError("nothing to evaluate: pass --tasks and / or --perplexity-data")
    tasks = resolve_tasks(args.tasks) if args.tasks else None  # bad task names fail before the model loads
    texts = None
    if args.perplexity_data:
        texts = load_texts(
            args.perplexity_data, text_column=args.text_column, split=args.split, max_documents=args.max_documents
        )
    model, tokenizer = load_pretrained(args.model, revision=args.revision, endpoint=args.endpoint, token=args.token)

    scores = None
    if texts is not None:
        scores = perplexity(
            model, tokenizer, texts, max_length=args.max_length, stride=args.stride, batch_size=args.batch_size
        )
    harness = None
    if tasks is not None:
        limit = None if args.limit is None else (args.limit if args.limit < 1 else int(args.limit))
        harness = run_harness(
            model, tokenizer, tasks, batch_size=args.batch_size, num_fewshot=args.num_fewshot, limit=limit
        )
    results = build_results(
        model=args.model,
        revision=args.revision,
        perplexity=scores,
        perplexity_dataset=args.perplexity_data,
        perplexity_split=args.split,
        harness=harness,
    )
    shown = {key: results[key] for key in ("model", "revision", "perplexity", "tasks") if key in results}
    print(json.dumps(shown, indent=2))
    if args.output:
        print(f"results written to {write_results(args.output, results)}")
    return 0
