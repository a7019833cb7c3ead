"""spectra-hf against llama.cpp on the same machine, in one run: a packed TriLM decoding and prefilling with the 2-bit
kernel (default path, and with the int8 embedding/head) next to llama.cpp's `llama-bench` on the same weights
exported with `spectra-hf convert ... --to gguf-tq2_0`.

    python bench/bench_vs_llamacpp.py [--sizes 99M 390M 1.1B 3.9B] [--rounds 2] [--llama-cpp DIR]

Full-size shapes from the suite registry, random weights (speed does not depend on values); a byte-level BPE
tokenizer is saved beside each model (llama.cpp refuses a GGUF without tokenizer keys). Engines alternate, round by
round, so a shared machine's load falls on both alike. Settings: 2 threads, decode 64 tokens after an 8-token
context (`llama-bench -n 64 -d 8`), prefill 512 tokens (`-p 512 -d 8`). Printed per size: tokens/s of each engine
(best round), the ratios spectra-hf / llama.cpp, the peak RSS of each process (its VmHWM), whether
the export needed `--allow-f16-fallback` (o_proj of the 1.1B: its scale shards do not fill TQ2_0's 256-weight
blocks, so llama.cpp reads it in f16), and the load average at each measurement. Also printed: the machine's SIMD
flags, llama.cpp's build flags (from the README beside its bin/) and the 2-bit kernel in force. A benchmark only:
never run by the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the shared build: ../shared/tools/llama.cpp from the main checkout, ../../shared/... from a worktree in /work/wt
DEFAULT_LLAMA_CPP = next(
    (p / "shared" / "tools" / "llama.cpp" for p in (REPO.parent, REPO.parent.parent) if (p / "shared").is_dir()),
    REPO.parent / "shared" / "tools" / "llama.cpp",
)
THREADS, DECODE, CONTEXT, PREFILL = 2, 64, 8, 512
SIMD_FLAGS = re.compile(r"^(avx\S*|fma|f16c|sse4_2|amx\S*)$")


def run_measured(command: list[str], *, env: dict[str, str] | None = None) -> tuple[str, str, int, int]:
    """(stdout, stderr, exit status, peak RSS in bytes) of `command`. The peak is the child's VmHWM, read from /proc
    every 20 ms while it runs (monotonic, so only growth in its last 20 ms can be missed). Not wait4's ru_maxrss:
    Linux carries the parent's high-water mark (this process, with torch loaded) into a child across fork and exec."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        peak = 0
        while process.poll() is None:
            with contextlib.suppress(OSError, StopIteration, ValueError):
                with open(f"/proc/{process.pid}/status") as status:
                    line = next(line for line in status if line.startswith("VmHWM:"))
                peak = max(peak, int(line.split()[1]) * 1024)
            time.sleep(0.02)
        out.seek(0), err.seek(0)
        return out.read().decode(), err.read().decode(), process.returncode, peak


def machine_flags() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        flags = next(line for line in cpuinfo if line.startswith("flags")).split(":", 1)[1].split()
        cpuinfo.seek(0)
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    return f"{model}; {os.cpu_count()} CPUs; " + " ".join(sorted(f for f in flags if SIMD_FLAGS.match(f)))


def llama_cpp_build(directory: Path) -> str:
    """The build flags named in the README beside llama.cpp's bin/ (the shared build documents them there)."""
    readme = directory / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    match = re.search(r"Built with `([^`]*)`", text.replace("\n", " "))
    return re.sub(r"\s+", " ", match.group(1)) if match else "unknown (no README with the build flags)"


def prepare(size: str, directory: Path) -> tuple[Path, Path, bool]:
    """A random packed TriLM of `size` with a tokenizer, and its TQ2_0 GGUF: (model dir, gguf, f16 fallback used)."""
    from spectra_hf.testing.corpus import local_corpus, train_tokenizer

    model = directory / "model"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_inference.py"), "--save", size, str(model)],
        check=True, capture_output=True,
    )
    train_tokenizer(local_corpus(max_documents=300)).save_pretrained(model)
    gguf = directory / "model-tq2_0.gguf"
    command = ["spectra-hf", "convert", str(model), str(gguf), "--to", "gguf-tq2_0"]
    done = subprocess.run(command, capture_output=True, text=True)
    fallback = False
    if done.returncode and "--allow-f16-fallback" in done.stderr + done.stdout:
        fallback = True
        done = subprocess.run([*command, "--allow-f16-fallback"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"convert failed for {size}: {(done.stderr or done.stdout).strip()[-1000:]}")
    return model, gguf, fallback


def llama_bench(binary: Path, gguf: Path) -> dict:
    out, err, status, peak = run_measured(
        [str(binary), "-m", str(gguf), "-p", str(PREFILL), "-n", str(DECODE), "-d", str(CONTEXT),
         "-t", str(THREADS), "-r", "1", "-o", "json"]
    )
    if status:
        raise SystemExit(f"llama-bench failed: {err.strip()[-1000:]}")
    rows = json.loads(out)
    speed = {("prefill" if row["n_prompt"] else "decode"): row["avg_ts"] for row in rows}
    return {**speed, "peak": peak, "load": os.getloadavg()[0], "cpu_info": rows[0].get("cpu_info", "?")}


def spectra_worker(checkpoint: str, int8: bool) -> dict:
    """Decode (median step of DECODE after CONTEXT tokens) and prefill tokens/s of the packed TriLM, in-process."""
    import statistics

    import torch
    from transformers import DynamicCache

    from spectra_hf import TriLMForCausalLM

    torch.set_num_threads(THREADS)
    model = TriLMForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, int8_embeddings=int8).eval()
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, CONTEXT), generator=generator)
    long_prompt = torch.randint(0, model.config.vocab_size, (1, PREFILL), generator=generator)

    def decode(steps: int) -> list[float]:
        cache, seconds = DynamicCache(config=model.config), []
        with torch.inference_mode():
            token = model(prompt, cache=cache, cache_position=torch.arange(CONTEXT)).logits[:, -1:].argmax(-1)
            for i in range(steps):
                begin = time.perf_counter()
                out = model(token, cache=cache, cache_position=torch.tensor([CONTEXT + i]))
                token = out.logits[:, -1:].argmax(-1)
                seconds.append(time.perf_counter() - begin)
        return seconds

    decode(2)  # warm-up (and the kernel's first-use build)
    step = statistics.median(decode(DECODE))
    with torch.inference_mode():
        model(long_prompt[:, :16], use_cache=False, logits_to_keep=1)
        begin = time.perf_counter()
        model(long_prompt, use_cache=False, logits_to_keep=1)
        prefill = time.perf_counter() - begin
    with open("/proc/self/status") as status:
        peak = int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024
    return {"decode": 1 / step, "prefill": PREFILL / prefill, "own_peak": peak}


def spectra_bench(checkpoint: Path, int8: bool) -> dict:
    out, err, status, peak = run_measured(
        [sys.executable, __file__, "--worker", str(checkpoint), "int8" if int8 else "default"],
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    if status:
        raise SystemExit(f"spectra-hf worker failed: {err.strip()[-1500:]}")
    row = json.loads(out.strip().splitlines()[-1])
    return {**row, "peak": max(peak, row.pop("own_peak")), "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["99M", "390M", "1.1B", "3.9B"])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per size (best round printed)")
    parser.add_argument("--llama-cpp", type=Path, default=DEFAULT_LLAMA_CPP, help="a llama.cpp build (bin/ inside)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(spectra_worker(args.worker[0], args.worker[1] == "int8")))
        return
    binary = args.llama_cpp / "bin" / "llama-bench"
    if not binary.is_file():
        raise SystemExit(f"no llama-bench in {binary.parent}: build llama.cpp (its README) or pass --llama-cpp DIR")

    from spectra_hf.modeling.ternary_kernels import cpu_kernel_status

    print(f"machine: {machine_flags()}")
    print(f"llama.cpp: {args.llama_cpp} built with {llama_cpp_build(args.llama_cpp)}")
    print(f"spectra-hf CPU 2-bit kernel: {cpu_kernel_status()}")
    print(f"{THREADS} threads, decode {DECODE} tokens after {CONTEXT}, prefill {PREFILL}; load {os.getloadavg()}\n")
    header = (
        "| shape | llama.cpp TQ2_0 decode | spectra-hf 2bit | ratio | int8 embedding/head | ratio "
        "| llama.cpp prefill 512 | spectra-hf prefill | ratio | peak RSS llama.cpp / spectra / int8 | load avg |"
    )
    print(header + "\n" + re.sub(r"[^|]", "-", header), flush=True)
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as work:
            try:
                model, gguf, fallback = prepare(size, Path(work))
            except (subprocess.CalledProcessError, MemoryError) as error:
                print(f"| {size} | not run: {error} |", flush=True)
                continue
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for engine, measure in (
                    ("llama.cpp", functools.partial(llama_bench, binary, gguf)),
                    ("2bit", functools.partial(spectra_bench, model, False)),
                    ("int8", functools.partial(spectra_bench, model, True)),
                ):
                    row = measure()
                    kept = best.setdefault(engine, row)
                    for key in ("decode", "prefill"):
                        kept[key] = max(kept[key], row[key])
                    kept["peak"], kept["load"] = max(kept["peak"], row["peak"]), max(kept["load"], row["load"])
        ref, ours, int8 = best["llama.cpp"], best["2bit"], best["int8"]
        shape = f"{size}{' (o_proj f16: --allow-f16-fallback)' if fallback else ''}"
        print(
            f"| {shape} | {ref['decode']:.1f} | {ours['decode']:.1f} | {ours['decode'] / ref['decode']:.2f}x "
            f"| {int8['decode']:.1f} | {int8['decode'] / ref['decode']:.2f}x | {ref['prefill']:.1f} "
            f"| {ours['prefill']:.1f} | {ours['prefill'] / ref['prefill']:.2f}x "
            f"| {ref['peak'] / 2**20:.0f} / {ours['peak'] / 2**20:.0f} / {int8['peak'] / 2**20:.0f} MiB "
            f"| {max(r['load'] for r in best.values()):.1f} |",
            flush=True,
        )
    print(f"\nllama-bench's CPU: {best['llama.cpp']['cpu_info'] if best else '?'}")


if __name__ == "__main__":
    main()
