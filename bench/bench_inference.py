"""Decode and prefill speed, memory and bandwidth use: packed TriLM on each inference path vs FloatLM bf16 / fp32.

    python bench/bench_inference.py [--sizes 99M 390M 1.1B] [--tokens 16] [--prefill 128] [--variants ...]
                                    [--baseline-tree DIR]   (DIR/modeling: e.g. `git archive REV modeling | tar -x`)

Full-size shapes from the suite registry, random weights (speed does not depend on values). A TriLM is saved as a
packed checkpoint once per size and every TriLM variant loads it with `from_pretrained` in its own subprocess, so the
printed load peak is that of a real load. Printed per size and variant:
  load peak    VmHWM right after from_pretrained (TriLM) or after building (FloatLM) - the load's peak RSS
  resident     bytes of the parameters and buffers (`get_memory_footprint`: each storage once, at its size)
  RSS          the process's resident memory after the timed runs (weights + framework baseline + activations)
  decode       tokens/s at batch 1 after an 8-token prompt (KV cache): 1 / the median of `--tokens` steps
  prefill      tokens/s of one forward over `--prefill` tokens
  bytes/token  weight bytes read per decode token: everything but the embedding table, plus one embedding row
  of BW        bytes/token x decode tokens/s / the read bandwidth measured in the same run (the physical limit)
  vs bf16      decode speed and resident bytes relative to FloatLM bf16 of the same size (issue 14: speed >= 4x at
               1.1B, resident <= 0.40x; <= 0.25x with the int8 embedding/head)
"compiled" decodes with a static cache and torch.compile (inductor with its C++ wrapper; the compile time is
printed), the route the README offers; the eager rows use transformers' dynamic cache.
"int8emb" loads with int8_embeddings=True (a deviation from the paper); its perplexity cost is printed as the ratio
of perplexities, int8 over float embedding/head, on 64 tokens sampled from the float model (random weights: a
measure of the logit noise, not of a trained model's quality).
Every figure is printed with the load average, since the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

from peak_memory import peak_rss_bytes

# (label, family, dtype of the float parts, ternary inference path + options): "+int8" loads with
# int8_embeddings=True, "+compile" decodes with a static cache and torch.compile (inductor, C++ wrapper)
VARIANTS = (
    ("FloatLM bf16", "floatlm", "bfloat16", None),
    ("FloatLM fp32", "floatlm", "float32", None),
    ("TriLM 2bit", "trilm", "bfloat16", "2bit"),
    ("TriLM 2bit int8emb", "trilm", "bfloat16", "2bit+int8"),
    ("TriLM int4", "trilm", "bfloat16", "int4"),
    ("TriLM int8", "trilm", "bfloat16", "int8"),
    ("TriLM dense bf16", "trilm", "bfloat16", "dense"),
    ("FloatLM bf16 compiled", "floatlm", "bfloat16", "+compile"),
    ("TriLM 2bit compiled", "trilm", "bfloat16", "2bit+compile"),
)
# With --baseline-tree DIR: the same TriLM rows with DIR/modeling (e.g. an older commit's tree, `git archive`) in
# the same run, for before/after ratios on one machine state
BASELINE_VARIANTS = (
    ("TriLM 2bit baseline", "trilm", "bfloat16", "2bit+baseline"),
    ("TriLM 2bit int8emb baseline", "trilm", "bfloat16", "2bit+int8+baseline"),
    ("TriLM 2bit compiled baseline", "trilm", "bfloat16", "2bit+compile+baseline"),
)
BASELINE_ENV = "SPECTRA_BENCH_BASELINE_TREE"
PROMPT_TOKENS = 8


def current_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def random_model(family: str, size: str, dtype):
    """A full-size random model built on the meta device and materialized once (no second copy)."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from spectra_hf import FloatLMForCausalLM, TernaryLinear, TriLMForCausalLM
    from spectra_hf.suite import config_for

    name = f"{'TriLM' if family == 'trilm' else 'FloatLM'}_{size}"
    config = config_for(name, **({"weight_format": "packed"} if family == "trilm" else {}))
    with torch.device("meta"):
        model = (TriLMForCausalLM if family == "trilm" else FloatLMForCausalLM)(config)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(1.0) if param.ndim == 1 else param.normal_(0, 0.02, generator=generator)
        for module in model.modules():
            if isinstance(module, TernaryLinear):
                module.weight_packed.copy_(torch.randint(0, 243, module.weight_packed.shape, generator=generator))
                module.weight_scale.uniform_(0.01, 0.05, generator=generator)
        model.model.rotary_emb = LlamaRotaryEmbedding(config)
    return model.to(dtype).eval()


def resident_bytes(model) -> tuple[int, int]:
    """(bytes of all parameters and buffers, each storage once: `get_memory_footprint` on a TriLM, transformers' count
    on a FloatLM, whose tensors share nothing; bytes of the input embedding table)."""
    embedding = model.get_input_embeddings().weight
    return model.get_memory_footprint(), embedding.numel() * embedding.element_size()


def worker(family: str, size: str, dtype_name: str, path: str | None, checkpoint: str | None, args) -> dict:
    import statistics

    import torch
    from transformers import DynamicCache, StaticCache

    dtype = getattr(torch, dtype_name)
    start = time.perf_counter()
    path, *options = (path or "").split("+")
    int8, compiled = "int8" in options, "compile" in options
    if family == "trilm" and "baseline" in options:
        sys.path.insert(0, os.environ[BASELINE_ENV])
        from modeling import TriLMForCausalLM as BaselineTriLM  # the baseline tree's remote-code package

        model = BaselineTriLM.from_pretrained(
            checkpoint, ternary_inference=path or None, dtype=dtype, int8_embeddings=int8
        ).eval()
    elif family == "trilm":
        from spectra_hf import TriLMForCausalLM

        model = TriLMForCausalLM.from_pretrained(
            checkpoint, ternary_inference=path or None, dtype=dtype, int8_embeddings=int8
        ).eval()
    else:
        model = random_model(family, size, dtype)
    load_seconds = time.perf_counter() - start
    load_peak = peak_rss_bytes()
    weights, embedding = resident_bytes(model)
    row = embedding // model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS), generator=generator)
    long_prompt = torch.randint(0, model.config.vocab_size, (1, args.prefill), generator=generator)
    step = model.forward
    compile_seconds = None
    if compiled:
        import torch._inductor.config as inductor_config

        inductor_config.cpp_wrapper = True  # the generated C++ calls the kernels: no Python between them
        step = torch.compile(model.forward, fullgraph=True, dynamic=False)

    def decode(steps: int) -> list[float]:
        """Seconds of each of `steps` batch-1 decode steps after the prompt."""
        cache = (
            StaticCache(config=model.config, max_cache_len=PROMPT_TOKENS + args.tokens + 1)
            if compiled
            else DynamicCache(config=model.config)
        )
        seconds = []
        with torch.inference_mode():
            out = model(prompt, cache=cache, cache_position=torch.arange(PROMPT_TOKENS))
            token = out.logits[:, -1:].argmax(-1)
            for i in range(steps):
                begin = time.perf_counter()
                out = step(token, cache=cache, cache_position=torch.tensor([PROMPT_TOKENS + i]))
                token = out.logits[:, -1:].argmax(-1)
                seconds.append(time.perf_counter() - begin)
        return seconds

    def prefill() -> float:
        with torch.inference_mode():
            begin = time.perf_counter()
            model(long_prompt, use_cache=False, logits_to_keep=1)
            return time.perf_counter() - begin

    begin = time.perf_counter()
    decode(2)  # warm-up (and the first-use kernel build or compilation, if any)
    if compiled:
        compile_seconds = time.perf_counter() - begin
    step_seconds = decode(args.tokens)
    decode_seconds = statistics.median(step_seconds)  # the median step: a shared machine's stalls stay out of it
    prefill()
    prefill_seconds = prefill()
    ppl_ratio = None
    if int8:  # perplexity with the int8 embedding/head over the float one, on 64 tokens the float model generated
        from spectra_hf import TriLMForCausalLM

        reference = TriLMForCausalLM.from_pretrained(checkpoint, ternary_inference=path, dtype=dtype).eval()
        with torch.inference_mode():
            torch.manual_seed(0)
            text = reference.generate(prompt, max_new_tokens=64, do_sample=True, top_k=20)
            losses = [m(text, labels=text).loss.float() for m in (reference, model)]
        ppl_ratio = float(torch.exp(losses[1] - losses[0]))
    return {
        "ppl_ratio": ppl_ratio,
        "weight_bytes": weights,
        "bytes_per_token": weights - embedding + row,
        "load_seconds": load_seconds,
        "load_peak": load_peak,
        "rss": current_rss_bytes(),
        "decode": 1 / decode_seconds,
        "compile_seconds": compile_seconds,
        "prefill": args.prefill / prefill_seconds,
        "load": os.getloadavg()[0],
    }


def measure_bandwidth() -> float:
    """Read bandwidth in bytes/s: the best of 5 sums over a 512 MiB float32 tensor with torch's threads."""
    import torch

    data = torch.ones(2**27, dtype=torch.float32)  # [2^27] = 512 MiB
    data.sum()
    best = min(_timed(data.sum) for _ in range(5))
    return data.numel() * data.element_size() / best


def _run_layers(stack, inputs) -> None:
    """One batch-1 product through each layer of `stack` (inputs by in_features)."""
    for layer in stack:
        layer(inputs[layer.in_features])


def _run_products(products) -> None:
    for product, x in products:
        product(x)


def _timed(function) -> float:
    begin = time.perf_counter()
    function()
    return time.perf_counter() - begin


def block_matmuls(size: str, repeats: int = 20) -> None:
    """The seven ternary matmuls of one decoder block at `size`, batch 1, per path and thread count: the min of
    `repeats` runs, which a shared machine's load disturbs far less than whole-model timings."""
    import torch

    from spectra_hf import TernaryLinear
    from spectra_hf.suite import config_for

    config = config_for(f"TriLM_{size}")
    hidden, inner = config.hidden_size, config.intermediate_size
    shapes = [(hidden, hidden)] * 4 + [(inner, hidden)] * 2 + [(hidden, inner)]  # q k v o, gate up, down: [out, in]
    generator = torch.Generator().manual_seed(0)
    inputs = {k: torch.randn(1, k, generator=generator).to(torch.bfloat16) for k in (hidden, inner)}  # [1, in]
    layers = {}
    for path in ("int4", "2bit"):
        layers[path] = []
        for out_features, in_features in shapes:
            digits = torch.randint(-1, 2, (out_features, in_features), generator=generator, dtype=torch.int8)
            layer = TernaryLinear.from_ternary(digits, torch.rand(1) + 0.01, shard_dim=0, eps=1e-5)
            layer.prepare_inference(path, torch.bfloat16)
            layers[path].append(layer)
    portable = None  # the portable C++ variant (no intrinsics), on the 2-bit layers' weights
    with contextlib.suppress(OSError, RuntimeError, subprocess.SubprocessError):
        from spectra_hf.modeling import ternary_kernels

        portable = ternary_kernels.load_cpu_library(
            "portable", compiler=os.environ.get("CXX") or "c++", cache_dir=ternary_kernels.kernel_cache_dir()
        )
    threads = torch.get_num_threads()
    for count in sorted({1, threads}):
        torch.set_num_threads(count)
        best = {}
        for path, stack in layers.items():
            with torch.inference_mode():
                for layer in stack:
                    layer(inputs[layer.in_features])
                best[path] = min(_timed(functools.partial(_run_layers, stack, inputs)) for _ in range(repeats))
        if portable is not None:
            products = [
                (functools.partial(portable.mm, packed=layer.weight_kernel, row_scale=layer.kernel_scale,
                                   col_scale=None), inputs[layer.in_features])
                for layer in layers["2bit"]
            ]
            with torch.inference_mode():
                best["portable"] = min(
                    _timed(functools.partial(_run_products, products)) for _ in range(repeats)
                )
        weights = sum(o * i for o, i in shapes)
        print(
            f"{size} block matmuls, {count} thread(s), min of {repeats}: int4 {best['int4'] * 1e3:.2f} ms, "
            f"2bit {best['2bit'] * 1e3:.2f} ms (x{best['int4'] / best['2bit']:.2f}; "
            f"2bit reads {weights / 4 / best['2bit'] / 1e9:.1f} GB/s)"
            + (f", portable C++ 2bit {best['portable'] * 1e3:.2f} ms" if "portable" in best else "")
            + f" (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    torch.set_num_threads(threads)


def save_random_trilm(size: str, directory: str) -> None:
    import torch

    random_model("trilm", size, torch.bfloat16).save_pretrained(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["99M", "390M", "1.1B"])
    parser.add_argument("--tokens", type=int, default=32, help="decode steps timed per model (after 2 warm-up steps)")
    parser.add_argument("--prefill", type=int, default=128, help="prompt length of the timed prefill")
    parser.add_argument("--variants", nargs="+", help="only these labels (default: all)")
    parser.add_argument("--baseline-tree", help="also run the TriLM 2bit rows with this tree's modeling/ package")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--save", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.save:
        save_random_trilm(*args.save)
        return
    if args.worker:
        family, size, dtype_name, path, checkpoint = args.worker
        print(json.dumps(worker(family, size, dtype_name, None if path == "-" else path, checkpoint, args)))
        return

    import torch

    from spectra_hf.modeling.ternary_kernels import cpu_kernel_status

    bandwidth = measure_bandwidth()
    print(
        f"threads={torch.get_num_threads()} torch={torch.__version__} decode tokens={args.tokens} "
        f"prefill={args.prefill} read bandwidth={bandwidth / 1e9:.1f} GB/s (load {os.getloadavg()[0]:.1f})\n"
        f"CPU 2-bit kernel: {cpu_kernel_status()}"
    )
    for size in args.sizes:
        block_matmuls(size)
    header = (
        f"{'size':>5} {'model':<28} {'load peak':>9} {'resident':>8} {'RSS':>6} {'decode':>7} {'prefill':>7} "
        f"{'MB/token':>8} {'of BW':>6} {'speed vs bf16':>13} {'mem vs bf16':>11} {'load avg':>8}"
    )
    print(header + "\n" + "-" * len(header), flush=True)
    variants = VARIANTS
    if args.baseline_tree:
        os.environ[BASELINE_ENV] = os.path.abspath(args.baseline_tree)
        variants = VARIANTS + BASELINE_VARIANTS
    for size in args.sizes:
        rows = {}
        with tempfile.TemporaryDirectory() as checkpoint:
            if any(
                family == "trilm" and (not args.variants or label in args.variants) for label, family, *_ in variants
            ):
                subprocess.run([sys.executable, __file__, "--save", size, checkpoint], check=True, capture_output=True)
            for label, family, dtype_name, path in variants:
                if args.variants and label not in args.variants:
                    continue
                command = [
                    sys.executable, __file__, "--worker", family, size, dtype_name, path or "-", checkpoint,
                    "--tokens", str(args.tokens), "--prefill", str(args.prefill),
                ]
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode:
                    print(f"{size:>5} {label:<28} failed: {result.stderr.strip().splitlines()[-1]}", flush=True)
                    continue
                rows[label] = row = json.loads(result.stdout.strip().splitlines()[-1])
                bf16 = rows.get("FloatLM bf16")
                speed = f"{row['decode'] / bf16['decode']:.2f}x" if bf16 else "-"
                memory = f"{row['weight_bytes'] / bf16['weight_bytes']:.2f}x" if bf16 else "-"
                print(
                    f"{size:>5} {label:<28} {row['load_peak'] / 2**20:>8.0f}M {row['weight_bytes'] / 2**20:>7.0f}M "
                    f"{row['rss'] / 2**20:>5.0f}M {row['decode']:>7.1f} {row['prefill']:>7.1f} "
                    f"{row['bytes_per_token'] / 1e6:>8.0f} {row['bytes_per_token'] * row['decode'] / bandwidth:>6.0%} "
                    f"{speed:>13} {memory:>11} {row['load']:>8.1f}"
                    + (f"  perplexity x{row['ppl_ratio']:.4f} vs float embedding/head" if row["ppl_ratio"] else "")
                    + (f"  (compiled in {row['compile_seconds']:.0f} s)" if row["compile_seconds"] else ""),
                    flush=True,
                )


if __name__ == "__main__":
    main()
