"""Speed of `spectra-hf dynamics`: the flip-rate pass on two full-size packed TriLM checkpoints, and a demo end to end.

    python bench/bench_dynamics.py [--size 3.9B] [--change 0.05] [--workdir /tmp] [--suite spectra-demo/suite]

1. Writes two packed TriLM checkpoints of the registry shape of `--size` (random digits; the second differs from the
   first in `--change` of its packed bytes, every 1/change-th byte) as `checkpoints/step1000` and `step2000` of a
   suite export, then times `checkpoint_dynamics` on them: digit counts and scales of both, flips between them. It
   prints packed MB analysed per second (both checkpoints' packed bytes / wall time, and per CPU second: on a shared
   machine the process gets a fraction of a core) and, separately, the counting
   alone on bytes already in memory (`flip_counts` + `digit_counts` on the largest matrix). The files were just
   written, so they are read from the page cache: the figure is the analysis speed, not a cold disk's.
2. With `--suite DIR` (a suite directory, e.g. a demo's `spectra-demo/suite`), times dynamics + table + figures over
   the checkpoints of each model in it that has some.

Disk: about 1.3 GB per 3.9B checkpoint (0.74 GB packed ternary bytes, the fp16 embedding and head), deleted at the
end. Report the load average next to the figures: this machine is shared.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def write_pair(export: Path, size: str, change: float) -> int:
    """Two packed checkpoints (steps 1000, 2000) of `size` under `export/checkpoints`; returns the packed ternary
    bytes of one."""
    import torch

    from spectra_hf.checkpoints.exports import ExportInfo, write_export_info
    from spectra_hf.checkpoints.io import ShardedWriter
    from spectra_hf.modeling.checkpoint_checks import linear_shapes
    from spectra_hf.suite import config_for

    name = f"TriLM_{size}"
    config = config_for(name, weight_format="packed", dtype="float16")
    directories = [export / "checkpoints" / f"step{step}" for step in (1000, 2000)]
    writers = []
    for step, directory in zip((1000, 2000), directories, strict=True):
        directory.mkdir(parents=True)
        config.save_pretrained(directory)
        write_export_info(directory, ExportInfo(name=name, family="trilm", step=step, format="packed"))
        writers.append(ShardedWriter(directory, max_shard_bytes=2 << 30))
    rng = np.random.default_rng(0)
    # random bytes are slow to draw on a loaded machine: every matrix is a slice of one pool, at its own offset
    pool = rng.integers(0, 243, 1 << 24, dtype=np.uint8)  # [16 Mi]
    stride = max(1, round(1 / change))  # every stride-th byte differs in the second checkpoint
    hidden, vocab, shards = config.hidden_size, config.vocab_size, config.pretraining_model_parallel
    float_tensors = {"model.embed_tokens.weight": torch.zeros(vocab, hidden, dtype=torch.float16)}  # [vocab, hidden]
    for writer in writers:
        for tensor_name, tensor in float_tensors.items():
            writer.add(tensor_name, tensor)
    packed_bytes = 0
    for layer in range(config.num_hidden_layers):
        for path, (rows, cols) in linear_shapes(config).items():
            prefix = f"model.layers.{layer}.{path}"
            size = -(-rows * cols // 5)
            offset = int(rng.integers(0, pool.size - size))
            before = pool[offset : offset + size]  # [ceil(rows * cols / 5)]
            after = before.copy()
            after[::stride] = (after[::stride].astype(np.uint16) + 1 + offset % 241) % 243
            packed_bytes += before.size
            for writer, packed in zip(writers, (before, after), strict=True):
                writer.add(f"{prefix}.weight_packed", torch.from_numpy(packed))
                scales = rng.uniform(0.01, 0.05, shards).astype(np.float32)  # [shards]
                writer.add(f"{prefix}.weight_scale", torch.from_numpy(scales))
        for writer in writers:
            for norm in ("input_layernorm", "post_attention_layernorm"):
                writer.add(f"model.layers.{layer}.{norm}.weight", torch.ones(hidden, dtype=torch.float16))
    for writer in writers:
        writer.add("model.norm.weight", torch.ones(hidden, dtype=torch.float16))
        writer.add("lm_head.weight", torch.zeros(vocab, hidden, dtype=torch.float16))
        writer.finish()
    return packed_bytes


def counting_only(size: str, *, repeats: int = 5) -> tuple[float, float]:
    """(MB per wall second, MB per CPU second) of `flip_counts` + `digit_counts` on the largest matrix of `size`,
    bytes already in memory (best of `repeats`)."""
    from spectra_hf.analysis.packed_counts import digit_counts, flip_counts
    from spectra_hf.modeling.checkpoint_checks import linear_shapes
    from spectra_hf.suite import config_for

    rows, cols = max(linear_shapes(config_for(f"TriLM_{size}")).values(), key=lambda s: s[0] * s[1])
    numel = rows * cols
    rng = np.random.default_rng(1)
    before = rng.integers(0, 243, -(-numel // 5), dtype=np.uint8)
    after = np.where(rng.random(before.size) < 0.05, rng.integers(0, 243, before.size), before).astype(np.uint8)
    best = best_cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        flip_counts(before, after, numel=numel)
        digit_counts(after, numel=numel)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return before.size / best / 1e6, before.size / best_cpu / 1e6


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pair_benchmark(size: str, change: float, workdir: str | None) -> None:
    """Part 1: two packed checkpoints of `size`, written then analysed (module docstring)."""
    from spectra_hf.analysis.dynamics import checkpoint_dynamics

    work = Path(tempfile.mkdtemp(prefix="bench-dynamics-", dir=workdir))
    try:
        print(f"load average before: {load_average()}")
        start = time.perf_counter()
        export = work / f"TriLM_{size}"
        packed = write_pair(export, size, change)
        written = time.perf_counter() - start
        print(f"wrote 2 x {packed / 1e6:.0f} MB of packed ternary bytes ({size}) in {written:.0f} s")
        start, start_cpu = time.perf_counter(), time.process_time()
        frame = checkpoint_dynamics(export, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        flips = frame[frame["statistic"] == "flip_fraction"]
        mean_flip = float((flips["value"] * flips["numel"]).sum() / flips["numel"].sum())
        print(
            f"dynamics over 2 checkpoints: {seconds:.1f} s wall, {cpu:.1f} s CPU: "
            f"{2 * packed / 1e6 / seconds:.0f} MB/s of packed weights ({2 * packed / 1e6 / cpu:.0f} MB per CPU second) "
            f"({len(frame)} rows; mean flip fraction {mean_flip:.4f}); peak RSS "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
        wall, per_cpu = counting_only(size)
        print(f"counting alone, bytes in memory (largest matrix, best of 5): {wall:.0f} MB/s, {per_cpu:.0f} MB/CPU s")
        print(f"load average after: {load_average()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def suite_benchmark(suite: Path) -> None:
    """Part 2: dynamics, table and figures over every model of `suite` that has checkpoints."""
    from spectra_hf.analysis.dynamics import checkpoint_dynamics, write_dynamics

    start = time.perf_counter()
    import spectra_hf.analysis.figures
    import spectra_hf.checkpoints.io  # noqa: F401  (torch, transformers: once per process, timed apart)

    print(f"imports (torch, transformers): {time.perf_counter() - start:.1f} s")
    for model in sorted(p for p in suite.iterdir() if (p / "checkpoints").is_dir()):
        out = Path(tempfile.mkdtemp(prefix="bench-dynamics-out-"))
        try:
            start = time.perf_counter()
            frame = checkpoint_dynamics(model, progress=False)
            analysed = time.perf_counter() - start
            write_dynamics(frame, out, overwrite=True)
            total = time.perf_counter() - start
            revisions = list(dict.fromkeys(frame["revision"]))
            print(
                f"{model.name}: {len(revisions)} revisions ({', '.join(revisions)}): analysis "
                f"{analysed:.2f} s, with table and figures {total:.2f} s"
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)
    print(f"load average after the suite: {load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="3.9B")
    parser.add_argument(
        "--change", type=float, default=0.05, help="share of packed bytes that differ, evenly spread (default 0.05)"
    )
    parser.add_argument("--workdir", default=None, help="where the checkpoints are written (default: the temp dir)")
    parser.add_argument("--suite", help="a suite directory (e.g. spectra-demo/suite): time dynamics over its models")
    parser.add_argument("--no-pair", action="store_true", help="skip part 1 (the full-size pair)")
    args = parser.parse_args()
    if not args.no_pair:
        pair_benchmark(args.size, args.change, args.workdir)
    if args.suite:
        suite_benchmark(Path(args.suite))


if __name__ == "__main__":
    main()
