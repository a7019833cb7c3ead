"""TriLM vs FloatLM training step: time and peak memory ratios, side by side in one run.

Each (size, family) runs in its own subprocess so its peak resident memory is its own. A step is forward, backward
and AdamW update on `--tokens` tokens. The decoder blocks have the suite size's real widths (and shard count); the
layer count and vocabulary are reduced (--layers, --vocab) so a CPU finishes in minutes: the ratio is a property of
the block shapes, and identical embedding/head costs would only dilute it.

    python bench/bench_train_step.py                       # 99M, 390M, 1.1B widths, 8192 tokens per step
    python bench/bench_train_step.py --sizes 99M --tokens 16384 --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from peak_memory import peak_rss_bytes


def measure(name: str, layers: int, vocab: int, tokens: int, seq: int, steps: int, dtype: str) -> dict:
    """Runs in the child process: build the model, warm up once, time `steps` steps, report peak RSS."""
    import torch
    from transformers import AutoModelForCausalLM

    from spectra_hf.suite import config_for

    torch.manual_seed(0)
    config = config_for(name, num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=seq)
    model = AutoModelForCausalLM.from_config(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, vocab, (tokens // seq, seq))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16-autocast")

    def step() -> None:
        with autocast:
            loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocates optimizer state and gradients
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times), "peak_rss_mib": peak_rss_bytes() / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["99M", "390M", "1.1B"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per training step")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions per family (median)")
    parser.add_argument("--dtype", choices=("fp32", "bf16-autocast"), default="fp32")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = measure(args.child, args.layers, args.vocab, args.tokens, args.seq, args.steps, args.dtype)
        print(json.dumps(result))
        return

    print(f"training step, {args.tokens} tokens, {args.layers} layers at each size's widths, vocab {args.vocab}, "
          f"{args.dtype}, median of {args.steps} steps x {args.rounds} interleaved rounds")
    header = (
        f"{'size':>6} {'FloatLM s':>10} {'TriLM s':>9} {'time ratio':>10} {'FloatLM MiB':>12} {'TriLM MiB':>10} "
        f"{'mem ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        runs: dict[str, list[dict]] = {"FloatLM": [], "TriLM": []}
        for _ in range(args.rounds):  # interleaved, so load changes on a shared machine hit both families alike
            for family in runs:
                child = [sys.executable, __file__, "--child", f"{family}_{size}", "--layers", str(args.layers),
                         "--vocab", str(args.vocab), "--tokens", str(args.tokens), "--seq", str(args.seq),
                         "--steps", str(args.steps), "--dtype", args.dtype]
                out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
                runs[family].append(json.loads(out.strip().splitlines()[-1]))
        f, t = ({key: statistics.median(r[key] for r in runs[family]) for key in runs[family][0]} for family in runs)
        print(f"{size:>6} {f['step_s']:>10.3f} {t['step_s']:>9.3f} {t['step_s'] / f['step_s']:>10.3f} "
              f"{f['peak_rss_mib']:>12.0f} {t['peak_rss_mib']:>10.0f} {t['peak_rss_mib'] / f['peak_rss_mib']:>9.3f}")


if __name__ == "__main__":
    main()
