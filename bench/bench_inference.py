"""Decode speed (tokens/s at batch 1) and memory: packed TriLM (each inference path) vs FloatLM fp32 / bf16.

    python bench/bench_inference.py [--sizes 190M 390M 1.1B] [--tokens 16] [--device cpu]

Full-size shapes from the suite registry, random weights (speed does not depend on values). Every model runs in its
own subprocess so that its peak RSS is its own. Printed per size: resident weight bytes (parameters + buffers),
process peak RSS, decode tokens/s, and the ratios the issue targets: TriLM weight memory / FloatLM bf16 weight memory
(target <= 0.3; "blocks/bf16" counts the decoder blocks only, without the float embedding and LM head) and TriLM
decode speed / the faster FloatLM dtype (target >= 1.5).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from peak_memory import peak_rss_bytes

# (label, family, dtype of the float parts, ternary inference path)
VARIANTS = (
    ("FloatLM fp32", "floatlm", "float32", None),
    ("FloatLM bf16", "floatlm", "bfloat16", None),
    ("TriLM int8", "trilm", "bfloat16", "int8"),
    ("TriLM int4", "trilm", "bfloat16", "int4"),
    ("TriLM dense bf16", "trilm", "bfloat16", "dense"),
    ("TriLM dense fp32", "trilm", "float32", "dense"),
)


def build(family: str, size: str, dtype, path: str | None, device: str):
    """A full-size random model built on the meta device and materialized once (no second copy)."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from spectra_hf import FloatLMForCausalLM, TernaryLinear, TriLMForCausalLM
    from spectra_hf.suite import config_for

    name = f"{'TriLM' if family == 'trilm' else 'FloatLM'}_{size}"
    extra = {"weight_format": "packed", "ternary_inference": path} if family == "trilm" else {}
    config = config_for(name, **extra)
    model_class = TriLMForCausalLM if family == "trilm" else FloatLMForCausalLM
    with torch.device("meta"):
        model = model_class(config)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param.ndim == 1:
                param.fill_(1.0)
            else:
                param.normal_(0, 0.02, generator=generator)
        for module in model.modules():
            if isinstance(module, TernaryLinear):
                module.weight_packed.copy_(torch.randint(0, 243, module.weight_packed.shape, generator=generator, device=device))
                module.weight_scale.uniform_(0.01, 0.05, generator=generator)
        model.model.rotary_emb = LlamaRotaryEmbedding(config).to(device)
        model = model.to(dtype).eval()
        if family == "trilm":
            model.prepare_ternary_inference(path)
    return model


def worker(family: str, size: str, dtype_name: str, path: str | None, tokens: int, device: str) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    model = build(family, size, dtype, path, device)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    block_bytes = sum(t.numel() * t.element_size() for name, t in tensors.items() if ".layers." in name)
    ids = torch.randint(0, model.config.vocab_size, (1, 8), device=device)

    def decode(steps: int) -> float:
        with torch.inference_mode():
            out = model(ids, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                out = model(token, past_key_values=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    decode(2)  # warm-up
    seconds = decode(tokens)
    return {"weight_bytes": weight_bytes, "block_bytes": block_bytes, "peak_rss": peak_rss_bytes(), "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["190M", "390M", "1.1B"])
    parser.add_argument("--tokens", type=int, default=16, help="decode steps timed per model (after 2 warm-up steps)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", help="only these labels (default: all)")
    parser.add_argument("--worker", nargs=4, metavar=("FAMILY", "SIZE", "DTYPE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        family, size, dtype_name, path = args.worker
        print(json.dumps(worker(family, size, dtype_name, None if path == "-" else path, args.tokens, args.device)))
        return

    import torch

    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} decode tokens={args.tokens}")
    header = (
        f"{'size':>5} {'model':<17} {'weights MiB':>11} {'peak RSS MiB':>12} {'tok/s':>7} {'mem/bf16':>9} "
        f"{'blocks/bf16':>11} {'speed/best float':>16}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        rows = {}
        for label, family, dtype_name, path in VARIANTS:
            if args.variants and label not in args.variants:
                continue
            command = [sys.executable, __file__, "--worker", family, size, dtype_name, path or "-",
                       "--tokens", str(args.tokens), "--device", args.device]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                print(f"{size:>5} {label:<17} failed: {result.stderr.strip().splitlines()[-1]}")
                continue
            rows[label] = json.loads(result.stdout.strip().splitlines()[-1])
        bf16 = rows.get("FloatLM bf16", {}).get("weight_bytes")
        bf16_blocks = rows.get("FloatLM bf16", {}).get("block_bytes")
        best_float = max((rows[k]["tokens_per_s"] for k in ("FloatLM fp32", "FloatLM bf16") if k in rows), default=None)
        for label, row in rows.items():
            memory = f"{row['weight_bytes'] / bf16:.2f}x" if bf16 else "-"
            blocks = f"{row['block_bytes'] / bf16_blocks:.2f}x" if bf16_blocks else "-"
            speed = f"{row['tokens_per_s'] / best_float:.2f}x" if best_float else "-"
            print(
                f"{size:>5} {label:<17} {row['weight_bytes'] / 2**20:>11.0f} {row['peak_rss'] / 2**20:>12.0f} "
                f"{row['tokens_per_s']:>7.1f} {memory:>9} {blocks:>11} {speed:>16}",
                flush=True,
            )


if __name__ == "__main__":
    main()
