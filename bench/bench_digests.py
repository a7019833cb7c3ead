"""What checking the recorded tensor digests costs at load: `from_pretrained` of a packed TriLM with and without
`verify_digests`, and the digest check alone.

    python bench/bench_digests.py [--size 3.9B] [--repeats 3] [--workdir /tmp]

Generates a packed checkpoint of the registry shape (random packed bytes in 0..242, per-shard scales, fp16
embedding and head) with the streaming writer that `convert` uses (which records the digests), then times, in this
process, the best of `repeats` loads each way (the page cache is warm after the first) on the CPU. The digest check
hashes every byte once (sha256, up to 8 threads), so its share of the load is about the same at every size: it is
printed as a fraction of the load time. Everything generated is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from bench_checks import best_of  # (bench/ is the script's directory, so on sys.path)


def write_packed(directory: Path, size: str) -> None:
    """A random packed TriLM of registry size `size`."""
    import torch

    from spectra_hf.checkpoints.io import ShardedWriter
    from spectra_hf.modeling import TriLMConfig, TriLMForCausalLM
    from spectra_hf.modeling.checkpoint_checks import linear_shapes
    from spectra_hf.modeling.modeling_trilm import TERNARY_SHARD_DIM
    from spectra_hf.modeling.packing import packed_size
    from spectra_hf.suite import config_kwargs

    config = TriLMConfig(**config_kwargs(f"TriLM_{size}"), weight_format="packed", dtype="float16")
    config.architectures = [TriLMForCausalLM.__name__]
    config.save_pretrained(directory)
    generator = torch.Generator().manual_seed(0)
    writer = ShardedWriter(directory, max_shard_bytes=2 << 30)
    hidden, vocab, shards = config.hidden_size, config.vocab_size, config.pretraining_model_parallel
    writer.add("model.embed_tokens.weight", torch.randn(vocab, hidden, generator=generator).half())  # [vocab, hidden]
    for layer in range(config.num_hidden_layers):
        for path in TERNARY_SHARD_DIM:
            out_features, in_features = linear_shapes(config)[path]
            packed = torch.randint(0, 243, (packed_size(out_features * in_features),), generator=generator)
            writer.add(f"model.layers.{layer}.{path}.weight_packed", packed.to(torch.uint8))  # [ceil(out*in/5)]
            writer.add(f"model.layers.{layer}.{path}.weight_scale", torch.full((shards,), 0.02))  # [shards]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            writer.add(f"model.layers.{layer}.{norm}.weight", torch.ones(hidden, dtype=torch.float16))  # [hidden]
    writer.add("model.norm.weight", torch.ones(hidden, dtype=torch.float16))  # [hidden]
    writer.add("lm_head.weight", torch.randn(vocab, hidden, generator=generator).half())  # [vocab, hidden]
    writer.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="3.9B")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    from spectra_hf.modeling import TriLMForCausalLM
    from spectra_hf.modeling.checkpoint_digests import require_digests_match

    root = Path(tempfile.mkdtemp(prefix="bench-digests-", dir=args.workdir))
    try:
        directory = root / "packed"
        directory.mkdir()
        write_packed(directory, args.size)
        weight_bytes = sum(path.stat().st_size for path in directory.glob("*.safetensors"))
        checked = require_digests_match(directory).checked

        def load(verify: bool) -> None:
            TriLMForCausalLM.from_pretrained(directory, verify_digests=verify)

        digests = best_of(args.repeats, lambda: require_digests_match(directory))
        plain = best_of(args.repeats, lambda: load(False))
        verified = best_of(args.repeats, lambda: load(True))
        print(f"TriLM_{args.size} packed: {weight_bytes / 2**30:.2f} GiB of weights, {checked} tensors")
        print(f"  digest check alone   {digests:7.2f} s  ({weight_bytes / digests / 2**30:.2f} GiB/s)")
        print(f"  from_pretrained      {plain:7.2f} s  (verify_digests=False)")
        print(f"  from_pretrained      {verified:7.2f} s  (verify_digests=True)")
        print(f"  digest check share   {digests / plain:7.1%} of the unchecked load; measured difference "
              f"{(verified - plain) / plain:+.1%}")
        loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(f"  load average         {loadavg}; {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
