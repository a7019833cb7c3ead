"""Perplexity evaluation cost: batch size, sliding-window stride, and the `evaluate` module against the plain call.

    python bench/bench_eval.py [--documents 60] [--max-length 128]

Scores the held-out local corpus with a scaled-down TriLM and FloatLM (hidden 128, 4 layers, vocab 1024, the demo's
default architecture) and prints tokens per second and each setting's time as a ratio to batch 1 / stride L-1.
A smaller stride gives each token more context (lower perplexity) at proportionally more compute.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from spectra_hf.corpus import local_corpus, train_tokenizer
from spectra_hf.demo import DemoConfig
from spectra_hf.evaluation import load_perplexity_metric, perplexity
from spectra_hf.suite import config_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    documents = local_corpus()
    tokenizer = train_tokenizer(documents[: -args.documents], vocab_size=1024)
    texts = documents[-args.documents :]
    architecture = DemoConfig().architecture(len(tokenizer)) | {"max_position_embeddings": args.max_length}
    length = args.max_length
    settings = [
        ("batch 1, stride L-1", dict(batch_size=1, stride=length - 1)),
        ("batch 8, stride L-1", dict(batch_size=8, stride=length - 1)),
        ("batch 8, stride L/2", dict(batch_size=8, stride=length // 2)),
        ("batch 8, stride L/4", dict(batch_size=8, stride=length // 4)),
    ]
    print(f"{args.documents} documents, max_length {length}, {torch.get_num_threads()} threads")
    print(f"{'model':<8} {'setting':<24} {'tokens/s':>9} {'time ratio':>10} {'perplexity':>10}")
    for name in ("TriLM_99M", "FloatLM_99M"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config_for(name, tiny=True, **architecture)).eval()
        baseline = None
        for label, kwargs in settings:
            started = time.perf_counter()
            scores = perplexity(model, tokenizer, texts, max_length=length, show_progress=False, **kwargs)
            seconds = time.perf_counter() - started
            baseline = baseline or seconds
            print(
                f"{name.split('_')[0]:<8} {label:<24} {scores['num_tokens'] / seconds:>9.0f} "
                f"{seconds / baseline:>10.2f} {scores['perplexity']:>10.2f}"
            )
        metric = load_perplexity_metric()
        started = time.perf_counter()
        metric.compute(predictions=texts, model=model, tokenizer=tokenizer, max_length=length, batch_size=8)
        seconds = time.perf_counter() - started
        print(f"{name.split('_')[0]:<8} {'evaluate module, b8':<24} {scores['num_tokens'] / seconds:>9.0f} "
              f"{seconds / baseline:>10.2f} {'(same)':>10}")


if __name__ == "__main__":
    main()
