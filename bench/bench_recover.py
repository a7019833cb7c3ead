"""QuantLM recovery (`spectra_hf.quantization.recover.recover_quantlm`) at a suite size: peak RSS and time.

    python bench/bench_recover.py [--size 3.9B] [--bits 4] [--layers N] [--work DIR]

Writes a synthetic QuantLM release of the registry's `--size` architecture (`spectra_hf.suite`; hidden 3072,
GLU 9216, 24 heads, vocabulary 50304 at 3.9B) to `--work`, one tensor at a time (`ShardedWriter`, fp16, 2 GiB
shards): every decoder linear is fl16(s * k) with random `--bits`-bit codes k and fp16 scales s (groups of 128 at
3/4 bits, per-channel at 6/8), the rest random fp16. Then recovers it in a fresh subprocess and prints that
process's peak RSS (VmHWM), its RSS after the imports, and the wall time.

`--layers` keeps every tensor at the full size's shape but writes fewer decoder layers (default: all of them).
Recovery holds one tensor at a time, so its peak does not grow with the number of layers (run two layer counts to
see it) and its time grows linearly with them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECOVER_CHILD = """
import json, sys, time
from peak_memory import peak_rss_bytes
import torch, transformers, optimum.gptq, gptqmodel  # imports first, so that their RSS is reported apart
import spectra_hf.quantization.recover as recover
imported = peak_rss_bytes()
start = time.perf_counter()
report = recover.recover_quantlm(sys.argv[1], sys.argv[2], bits=int(sys.argv[3]))
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"seconds": seconds, "peak_rss": peak_rss_bytes(), "after_imports_rss": imported,
                              "exact": report.exact, "tensors": report.tensors, "values": report.fit.values}))
"""


def write_release(directory: Path, *, size: str, bits: int, layers: int | None) -> tuple[int, int]:
    """The synthetic release (see the module docstring). Returns (parameters, bytes written)."""
    import torch
    from transformers import LlamaConfig

    from spectra_hf.checkpoints.io import ShardedWriter
    from spectra_hf.modeling.checkpoint_checks import linear_shapes
    from spectra_hf.suite import QUANT_GROUP_SIZE, config_kwargs

    kwargs = config_kwargs(f"FloatLM_{size}")
    if layers is not None:
        kwargs["num_hidden_layers"] = layers
    kwargs["tie_word_embeddings"] = False  # the release stores lm_head.weight
    config = LlamaConfig(**kwargs)
    config.dtype = torch.float16
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    group = QUANT_GROUP_SIZE[bits]
    hidden, vocab = config.hidden_size, config.vocab_size
    writer = ShardedWriter(directory)
    parameters = 0

    def add(name: str, tensor: torch.Tensor) -> None:
        nonlocal parameters
        parameters += tensor.numel()
        writer.add(name, tensor)

    add("model.embed_tokens.weight", (torch.randn(vocab, hidden, generator=generator) * 0.02).half())  # [V, h]
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        for path, (out_features, in_features) in linear_shapes(config).items():
            size_ = in_features if group < 0 else group
            codes = torch.randint(low, high + 1, (out_features, in_features), generator=generator, dtype=torch.int8)
            scales = (torch.rand(out_features, in_features // size_, generator=generator) * 1e-3 + 1e-4).half()
            weight = scales.repeat_interleave(size_, dim=1) * codes.half()  # [out, in], fp16 product: fl16(s * k)
            add(f"{prefix}.{path}.weight", weight)
            del codes, weight
        add(f"{prefix}.input_layernorm.weight", torch.ones(hidden, dtype=torch.float16))
        add(f"{prefix}.post_attention_layernorm.weight", torch.ones(hidden, dtype=torch.float16))
    add("model.norm.weight", torch.ones(hidden, dtype=torch.float16))
    add("lm_head.weight", (torch.randn(vocab, hidden, generator=generator) * 0.02).half())  # [V, h]
    writer.finish()
    config.save_pretrained(directory)
    return parameters, writer.total_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="3.9B")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--layers", type=int, default=None, help="decoder layers to write (default: the size's)")
    parser.add_argument("--work", type=Path, default=None, help="directory for the release and the output")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        release, out = Path(scratch) / "release", Path(scratch) / "recovered"
        start = time.perf_counter()
        parameters, nbytes = write_release(release, size=args.size, bits=args.bits, layers=args.layers)
        print(f"release: {parameters / 1e9:.2f}B parameters, {nbytes / 2**30:.2f} GiB fp16, "
              f"written in {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        child = subprocess.run(
            [sys.executable, "-c", RECOVER_CHILD, str(release), str(out), str(args.bits)],
            cwd=Path(__file__).parent, capture_output=True, text=True, check=False,
        )  # fmt: skip
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode or not lines:
            sys.exit(f"recovery failed ({child.returncode}):\n{child.stderr[-4000:]}")
        result = json.loads(lines[-1].removeprefix("RESULT "))
        packed = sum(p.stat().st_size for p in out.glob("*.safetensors"))
        print(
            f"recovery at {args.bits} bits: {result['seconds']:.0f} s, peak RSS {result['peak_rss'] / 2**30:.2f} GiB "
            f"(after imports {result['after_imports_rss'] / 2**30:.2f} GiB), {result['tensors']} weights, "
            f"exact {result['exact']}, packed {packed / 2**30:.2f} GiB"
        )
        with open("/proc/loadavg") as load:
            print(f"load average: {load.read().strip()}")


if __name__ == "__main__":
    main()
