"""What int8 activations cost a trained TriLM: perplexity and greedy agreement against the exact path, one run.

    python bench/bench_int8_activations.py --model DIR --text FILE [--documents 64] [--prompts 32] [--new-tokens 32]

DIR is a packed TriLM export with its tokenizer (e.g. `WORKDIR/suite/TriLM_99M` of `spectra-hf demo`, trained 300
steps); FILE held-out text, one document per line (the demo's `WORKDIR/data/eval.txt`). The model is loaded twice on
CPU, on the 2bit path: exact (int16 activations, the default) and with `int8_activations=True`, each in float32 and
bfloat16. Printed per dtype: perplexity of each over the first `--documents` documents (windows of the model's
context, `spectra_hf.evaluation.text_perplexity.perplexity`), their ratio, and greedy decoding of `--new-tokens`
tokens from `--prompts` prompts (the first 16 tokens of those documents): the share of prompts
whose continuations are identical, and the mean number of tokens before the first difference (and, for scale, the
same between the exact path in bfloat16 and in float32). Also the largest
logit difference against the exact path relative to the logits' range. A benchmark only: never run by the tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
from transformers import AutoTokenizer

from spectra_hf import TriLMForCausalLM
from spectra_hf.evaluation.text_perplexity import load_texts, perplexity

PROMPT_TOKENS = 16


def greedy(model, prompts: list[torch.Tensor], new_tokens: int) -> list[list[int]]:
    with torch.inference_mode():
        return [
            model.generate(p[None], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0)[0, p.numel():].tolist()
            for p in prompts
        ]


def agreement(runs_a: list[list[int]], runs_b: list[list[int]]) -> tuple[int, float]:
    """(identical continuations, mean tokens before the first difference) of two greedy runs over the same prompts."""
    same = sum(a == b for a, b in zip(runs_a, runs_b, strict=True))
    prefix = statistics.mean(
        next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        for a, b in zip(runs_a, runs_b, strict=True)
    )
    return same, prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a packed TriLM export with its tokenizer")
    parser.add_argument("--text", required=True, help="held-out text, one document per line")
    parser.add_argument("--documents", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    scored = load_texts(args.text, max_documents=args.documents)
    prompts = []  # the comparison is between two paths of one model: prompts may come from the scored documents
    for text in scored:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= PROMPT_TOKENS:
            prompts.append(torch.tensor(ids[:PROMPT_TOKENS]))
        if len(prompts) == args.prompts:
            break
    print(f"model: {args.model}; {len(scored)} documents scored, {len(prompts)} prompts x {args.new_tokens} tokens; "
          f"load {os.getloadavg()}")
    print("| dtype | perplexity exact | int8 activations | ratio | identical continuations | mean tokens before the "
          "first difference | max logit difference / logit range |")
    print("|---|---|---|---|---|---|---|")
    exact_runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        exact = TriLMForCausalLM.from_pretrained(args.model, ternary_inference="2bit", dtype=dtype).eval()
        int8 = TriLMForCausalLM.from_pretrained(args.model, ternary_inference="2bit", dtype=dtype,
                                                int8_activations=True).eval()
        scores = [perplexity(m, tokenizer, scored, show_progress=False) for m in (exact, int8)]
        runs = [greedy(m, prompts, args.new_tokens) for m in (exact, int8)]
        exact_runs[dtype] = runs[0]
        same, prefix = agreement(*runs)
        batch = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
        with torch.inference_mode():
            reference, logits = exact(batch).logits.float(), int8(batch).logits.float()
        spread = (reference.max() - reference.min()).item()
        print(f"| {str(dtype).removeprefix('torch.')} | {scores[0]['perplexity']:.4f} | {scores[1]['perplexity']:.4f} "
              f"| {scores[1]['perplexity'] / scores[0]['perplexity']:.5f} | {same} / {len(prompts)} | {prefix:.1f} "
              f"of {args.new_tokens} | {(logits - reference).abs().max().item() / spread:.2e} |", flush=True)
    same, prefix = agreement(exact_runs[torch.float32], exact_runs[torch.bfloat16])
    print(f"\nFor scale, the exact path in bfloat16 against the exact path in float32: {same} / {len(prompts)} "
          f"identical continuations, {prefix:.1f} of {args.new_tokens} tokens before the first difference.")
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
