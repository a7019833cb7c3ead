"""Perplexity evaluation cost: batch size, sliding-window stride, and the `evaluate` module against the plain call.

    python bench/bench_eval.py [--documents 60] [--max-length 128] [--repeats 3] [--models DIR DIR]

Scores held-out local text with a scaled-down TriLM and FloatLM (hidden 128, 4 layers, vocab 1024: the demo's default
architecture, untrained) or with the given model directories (e.g. a demo's WORKDIR/suite/TriLM_99M, scored on its
WORKDIR/data/eval.txt), and prints tokens per second and each setting's time as a ratio to batch 1 / stride L-1
(best of --repeats runs: the machine is shared). A smaller stride gives each token more context (lower perplexity
for a trained model) at proportionally more compute.
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from spectra_hf.demo import DemoConfig
from spectra_hf.evaluation.pretrained import load_pretrained
from spectra_hf.evaluation.text_perplexity import load_perplexity_metric, load_texts, perplexity
from spectra_hf.suite import config_for
from spectra_hf.testing.corpus import local_corpus, train_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", type=Path, help="export directories to score instead")
    args = parser.parse_args()

    length = args.max_length
    if args.models:
        texts = load_texts(str(args.models[0].parents[1] / "data" / "eval.txt"), max_documents=args.documents)
        models = [(path.name, *load_pretrained(path)) for path in args.models]
    else:
        documents = local_corpus()
        tokenizer = train_tokenizer(documents[: -args.documents], vocab_size=1024)
        texts = documents[-args.documents :]
        architecture = DemoConfig().architecture(len(tokenizer)) | {"max_position_embeddings": length}
        torch.manual_seed(0)
        models = [
            (f"untrained {name}", AutoModelForCausalLM.from_config(config_for(name, tiny=True, **architecture)).eval(),
             tokenizer)
            for name in ("TriLM_99M", "FloatLM_99M")
        ]
    settings = [
        ("batch 1, stride L-1", dict(batch_size=1, stride=length - 1)),
        ("batch 8, stride L-1", dict(batch_size=8, stride=length - 1)),
        ("batch 8, stride L/2", dict(batch_size=8, stride=length // 2)),
        ("batch 8, stride L/4", dict(batch_size=8, stride=length // 4)),
    ]
    print(f"{len(texts)} documents, max_length {length}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'model':<22} {'setting':<22} {'tokens/s':>9} {'time ratio':>10} {'perplexity':>10}")
    metric = load_perplexity_metric()
    for name, model, tokenizer in models:
        baseline = None
        runs = [(label, partial(perplexity, model, tokenizer, texts, max_length=length, show_progress=False, **kwargs))
                for label, kwargs in settings]
        runs.append(("evaluate module, b8", partial(
            metric.compute, predictions=texts, model=model, tokenizer=tokenizer, max_length=length, batch_size=8
        )))
        for label, run in runs:
            seconds, scores = _best_of(run, args.repeats)
            baseline = baseline or seconds
            print(
                f"{name:<22} {label:<22} {scores['num_tokens'] / seconds:>9.0f} {seconds / baseline:>10.2f} "
                f"{scores['perplexity']:>10.2f}"
            )


def _best_of(run, repeats: int) -> tuple[float, dict]:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        scores = run()
        best = min(best, time.perf_counter() - started)
    return best, scores


if __name__ == "__main__":
    main()
