"""Time and peak memory of converting a full-size original-release TriLM checkpoint to packed and back.

    python bench/bench_convert.py [--size 3.9B] [--workdir /tmp] [--no-roundtrip]

Generates a release-format checkpoint of the registry shape (LlamaForCausalLM layout, fp16 weights g_s * T with
random T and per-shard scales, sharded safetensors) into a temporary directory, tensor by tensor, then runs
`convert_checkpoint` release -> packed (and packed -> unpacked) each in a fresh subprocess and prints wall time and
peak RSS next to the checkpoint sizes. Everything generated is deleted at the end. Disk: about 2.1 bytes per
parameter of the size twice (release + round trip).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_release(directory: Path, size: str) -> None:
    """A random release-format TriLM of registry size `size` (see the module docstring)."""
    import torch
    from transformers import LlamaConfig

    from spectra_hf.checkpoints.io import ShardedWriter
    from spectra_hf.modeling.checkpoint_checks import linear_shapes
    from spectra_hf.modeling.configuration_trilm import without_trilm_keys
    from spectra_hf.modeling.modeling_trilm import TERNARY_SHARD_DIM
    from spectra_hf.suite import config_kwargs

    kwargs = config_kwargs(f"TriLM_{size}")
    shards = kwargs["pretraining_model_parallel"]
    config = LlamaConfig(**without_trilm_keys(kwargs), dtype="float16")
    config.pretraining_model_parallel = shards
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(directory)
    generator = torch.Generator().manual_seed(0)
    writer = ShardedWriter(directory, max_shard_bytes=2 << 30)
    hidden, vocab = config.hidden_size, config.vocab_size
    writer.add("model.embed_tokens.weight", torch.randn(vocab, hidden, generator=generator).half())
    for layer in range(config.num_hidden_layers):
        qkv_scales = (torch.rand(shards, generator=generator) * 0.05 + 0.01).half()
        for path, dim in TERNARY_SHARD_DIM.items():
            shape = linear_shapes(config)[path]
            fused = path.startswith("self_attn.") and path != "self_attn.o_proj"
            scales = qkv_scales if fused else (torch.rand(shards, generator=generator) * 0.05 + 0.01).half()
            per_index = scales.repeat_interleave(shape[dim] // shards)
            digits = torch.randint(-1, 2, shape, generator=generator, dtype=torch.int8).half()
            writer.add(f"model.layers.{layer}.{path}.weight", digits * (per_index[:, None] if dim == 0 else per_index))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            writer.add(f"model.layers.{layer}.{norm}.weight", torch.ones(hidden, dtype=torch.float16))
    writer.add("model.norm.weight", torch.ones(hidden, dtype=torch.float16))
    writer.add("lm_head.weight", torch.randn(vocab, hidden, generator=generator).half())
    writer.finish()


def directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir() if path.suffix == ".safetensors")


def timed_convert(src: Path, out: Path, to: str) -> dict:
    """Run one conversion in a fresh process; its wall time and peak RSS."""
    code = (
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from peak_memory import peak_rss_bytes\n"
        "from spectra_hf.checkpoints.convert import convert_checkpoint\n"
        "start = time.perf_counter()\n"
        "convert_checkpoint(sys.argv[1], sys.argv[2], to=sys.argv[3], progress=False)\n"
        "seconds = time.perf_counter() - start\n"
        "print(json.dumps({'seconds': seconds, 'peak_rss': peak_rss_bytes()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(src), str(out), to], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="3.9B")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--no-roundtrip", action="store_true", help="skip packed -> unpacked")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.workdir))
    try:
        start = time.perf_counter()
        write_release(root / "release", args.size)
        generated = time.perf_counter() - start
        release_bytes = directory_bytes(root / "release")
        print(
            f"TriLM_{args.size} release-format checkpoint: {release_bytes / 2**30:.2f} GiB "
            f"(generated in {generated:.0f} s)"
        )
        header = f"{'conversion':<22} {'seconds':>8} {'peak RSS GiB':>12} {'output GiB':>10} {'RSS / input':>11}"
        print(header)
        print("-" * len(header))
        steps = [("release -> packed", "release", "packed", "packed")]
        if not args.no_roundtrip:
            steps.append(("packed -> unpacked", "packed", "unpacked", "unpacked"))
        for label, src, out, to in steps:
            row = timed_convert(root / src, root / out, to)
            input_bytes = directory_bytes(root / src)
            print(f"{label:<22} {row['seconds']:>8.0f} {row['peak_rss'] / 2**30:>12.2f} "
                  f"{directory_bytes(root / out) / 2**30:>10.2f} {row['peak_rss'] / input_bytes:>10.2f}x", flush=True)
        if not args.no_roundtrip:
            print(f"round trip byte-identical: {identical(root / 'release', root / 'unpacked')}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def identical(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold the same tensors with the same bytes (compared one tensor at a time)."""
    import torch

    from spectra_hf.checkpoints.io import Checkpoint

    left, right = Checkpoint(a), Checkpoint(b)
    if sorted(left.tensor_names()) != sorted(right.tensor_names()):
        return False
    return all(
        left.tensor(name).dtype == right.tensor(name).dtype and torch.equal(left.tensor(name), right.tensor(name))
        for name in left.tensor_names()
    )


if __name__ == "__main__":
    main()
