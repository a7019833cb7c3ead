"""spectra-hf against llama.cpp on the same machine, in one run: a packed TriLM decoding and prefilling with the 2-bit
kernel (MODES: eager default, compiled decode, int8 embedding/head, and eager or compiled with int8 activations and
the int8 embedding/head) next to llama.cpp's `llama-bench` on the same weights exported with `spectra-hf convert ...
--to gguf-tq2_0`.

    python bench/bench_vs_llamacpp.py [--sizes 99M 390M 1.1B 3.9B] [--rounds 2] [--llama-cpp DIR]

Full-size shapes from the suite registry, random weights (speed does not depend on values); a byte-level BPE
tokenizer is saved beside each model (llama.cpp refuses a GGUF without tokenizer keys). Engines alternate, round by
round, so a shared machine's load falls on both alike. Settings: 2 threads, decode 64 tokens after an 8-token
context (`llama-bench -n 64 -d 8`), prefill 512 tokens (`-p 512 -d 8`); a decode step is timed as the forward of one
token with its logits (what llama-bench's tg times: llama_decode of a fixed token, no sampling; spectra-hf's greedy
argmax over the logits, 0.25 ms over bf16 logits, runs outside the timed region). Printed per size: tokens/s of
each engine (best round), the ratios spectra-hf / llama.cpp, the peak RSS of each process (its VmHWM), the eager
process's RSS growth from before loading to after decoding, with the weight pages it never touched added
(`unmapped_bytes`), against the model's resident bytes (`get_memory_footprint`), whether the export
needed `--allow-f16-fallback` (o_proj of the 1.1B: its scale shards do not fill TQ2_0's 256-weight blocks, so
llama.cpp reads it in f16), and the load average at each measurement. Also printed: the machine's SIMD
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
SIMD_FLAGS = re.compile(r"^(avx\S*|fma|f16c|sse4_2|gfni|amx\S*)$")  # (gfni: the avx512bf16 variant needs it)


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


# spectra-hf's configurations: (label, int8 embedding/head, compiled decode, int8 activations)
MODES = {
    "eager": ("2bit, eager (default)", False, False, False),
    "compiled": ("2bit, compile_for_decode", False, True, False),
    "int8emb": ("+ int8 embedding/head, eager", True, False, False),
    "int8eager": ("eager + int8 activations + int8 embedding/head", True, False, True),
    "fastest": ("compiled + int8 activations + int8 embedding/head", True, True, True),
}


def unmapped_bytes(tensors: list) -> int:
    """Bytes of the memory pages holding `tensors` (each page once) that are not mapped into this process, from
    /proc/self/pagemap (bit 63: present). The embedding table and LM head are views of the memory-mapped checkpoint:
    their pages count in RSS only once touched, and a short run touches few embedding rows, in a granularity that
    depends on the page cache (the same 99M model measured 1.14x or 1.42x growth over its resident bytes by whether
    its file had just been written). Adding these bytes counts every weight as resident, as a long run would."""
    import struct

    page = os.sysconf("SC_PAGE_SIZE")
    pages = set()
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.device.type == "cpu" and storage.nbytes():
            start = storage.data_ptr()
            pages.update(range(start // page, (start + storage.nbytes() - 1) // page + 1))
    absent = 0
    with open("/proc/self/pagemap", "rb") as pagemap:
        for number in sorted(pages):
            pagemap.seek(number * 8)
            (entry,) = struct.unpack("<Q", pagemap.read(8))
            absent += not entry >> 63
    return absent * page


def spectra_worker(checkpoint: str, mode: str) -> dict:
    """Decode (median step of DECODE after CONTEXT tokens) and prefill tokens/s of the packed TriLM in one of MODES,
    in-process; with the RSS before loading and after decoding, and the model's resident bytes."""
    import statistics

    import torch
    from transformers import DynamicCache, StaticCache

    from spectra_hf import TriLMForCausalLM

    def rss() -> int:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) * 1024

    _, int8_embeddings, compiled, int8_activations = MODES[mode]
    torch.set_num_threads(THREADS)
    rss_before = rss()
    model = TriLMForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16, int8_embeddings=int8_embeddings, int8_activations=int8_activations
    ).eval()
    resident = model.get_memory_footprint()  # (each storage once, at its size)
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, CONTEXT), generator=generator)
    long_prompt = torch.randint(0, model.config.vocab_size, (1, PREFILL), generator=generator)
    # the compiled route is what `spectra_hf.fast_decode.compile_for_decode` makes generate() use: a static cache
    # and the forward compiled with fullgraph=True, dynamic=False; timed here step by step like the eager route
    step_forward = torch.compile(model.forward, fullgraph=True, dynamic=False) if compiled else model.forward

    def decode(steps: int) -> list[float]:
        cache: StaticCache | DynamicCache
        if compiled:
            cache = StaticCache(config=model.config, max_cache_len=CONTEXT + DECODE + 2)
        else:
            cache = DynamicCache(config=model.config)
        seconds = []
        with torch.inference_mode():
            token = model(prompt, cache=cache, cache_position=torch.arange(CONTEXT)).logits[:, -1:].argmax(-1)
            for i in range(steps):
                position = torch.tensor([CONTEXT + i])
                begin = time.perf_counter()
                out = step_forward(token, cache=cache, cache_position=position)
                seconds.append(time.perf_counter() - begin)
                token = out.logits[:, -1:].argmax(-1)  # (untimed: llama-bench's tg samples nothing either)
        return seconds

    begin = time.perf_counter()
    decode(2)  # warm-up (the kernel's first-use build; the compiled route's compilation)
    warm_up = time.perf_counter() - begin
    step = statistics.median(decode(DECODE))
    rss_after_decode = rss()
    untouched = unmapped_bytes([*model.parameters(), *model.buffers()])
    with torch.inference_mode():
        model(long_prompt[:, :16], use_cache=False, logits_to_keep=1)
        begin = time.perf_counter()
        model(long_prompt, use_cache=False, logits_to_keep=1)
        prefill = time.perf_counter() - begin
    with open("/proc/self/status") as status:
        peak = int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024
    return {
        "decode": 1 / step, "prefill": PREFILL / prefill, "own_peak": peak, "warm_up": warm_up,
        "rss_growth": rss_after_decode - rss_before + untouched, "resident": resident,
    }


def spectra_bench(checkpoint: Path, mode: str) -> dict:
    out, err, status, peak = run_measured(
        [sys.executable, __file__, "--worker", str(checkpoint), mode],
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
        print(json.dumps(spectra_worker(args.worker[0], args.worker[1])))
        return
    binary = args.llama_cpp / "bin" / "llama-bench"
    if not binary.is_file():
        raise SystemExit(f"no llama-bench in {binary.parent}: build llama.cpp (its README) or pass --llama-cpp DIR")

    from spectra_hf.modeling.ternary_kernels import cpu_kernel_status

    print(f"machine: {machine_flags()}")
    print(f"llama.cpp: {args.llama_cpp} built with {llama_cpp_build(args.llama_cpp)}")
    print(f"spectra-hf CPU 2-bit kernel: {cpu_kernel_status()}")
    print(f"{THREADS} threads, decode {DECODE} tokens after {CONTEXT}, prefill {PREFILL}; load {os.getloadavg()}")
    print("spectra-hf modes: " + "; ".join(f"{name} = {label}" for name, (label, *_) in MODES.items()) + "\n")
    header = (
        "| shape | llama.cpp TQ2_0 decode | " + " | ".join(f"{name} | ratio" for name in MODES)
        + " | llama.cpp prefill 512 | eager prefill | ratio | fastest prefill | ratio "
        "| peak RSS llama.cpp / eager / fastest MiB | RSS growth / resident weights (eager) | load avg |"
    )
    print(header + "\n" + re.sub(r"[^|]", "-", header), flush=True)
    best: dict[str, dict] = {}
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as work:
            try:
                model, gguf, fallback = prepare(size, Path(work))
            except (subprocess.CalledProcessError, MemoryError) as error:
                print(f"| {size} | not run: {error} |", flush=True)
                continue
            best = {}
            engines = [("llama.cpp", functools.partial(llama_bench, binary, gguf))]
            engines += [(mode, functools.partial(spectra_bench, model, mode)) for mode in MODES]
            for _ in range(args.rounds):
                for engine, measure in engines:
                    row = measure()
                    kept = best.setdefault(engine, row)
                    for key in ("decode", "prefill"):
                        kept[key] = max(kept[key], row[key])
                    kept["peak"], kept["load"] = max(kept["peak"], row["peak"]), max(kept["load"], row["load"])
        ref, eager, fastest = best["llama.cpp"], best["eager"], best["fastest"]
        shape = f"{size}{' (o_proj f16: --allow-f16-fallback)' if fallback else ''}"
        decodes = " | ".join(
            f"{best[mode]['decode']:.1f} | {best[mode]['decode'] / ref['decode']:.2f}x" for mode in MODES
        )
        print(
            f"| {shape} | {ref['decode']:.1f} | {decodes} | {ref['prefill']:.1f} "
            f"| {eager['prefill']:.1f} | {eager['prefill'] / ref['prefill']:.2f}x "
            f"| {fastest['prefill']:.1f} | {fastest['prefill'] / ref['prefill']:.2f}x "
            f"| {ref['peak'] / 2**20:.0f} / {eager['peak'] / 2**20:.0f} / {fastest['peak'] / 2**20:.0f} "
            f"| {eager['rss_growth'] / eager['resident']:.2f}x of {eager['resident'] / 2**20:.0f} MiB "
            f"| {max(r['load'] for r in best.values()):.1f} |",
            flush=True,
        )
        compile_seconds = best["compiled"]["warm_up"]
        print(f"(compiled mode's warm-up incl. compilation at {size}: {compile_seconds:.0f} s)", flush=True)
    print(f"\nllama-bench's CPU: {best['llama.cpp']['cpu_info'] if best else '?'}")


if __name__ == "__main__":
    main()
