"""2-bit resident ternary weights and the kernels that read them directly (the "2bit" inference path).

Layout (`pack_2bit`, uint8 [out, in_padded / 4], in_padded = in rounded up to a multiple of 128): each row is a run
of 32-byte blocks of 128 weights. Inside block b, the 16-bit little-endian lane l (l = 0..15, bytes 2l and 2l + 1 of
the block) holds in its bits 2p..2p+1 (p = 0..7) the weight j = 128 b + 16 p + l as a two's-complement 2-bit code
(0 -> 00, +1 -> 01, -1 -> 11); padding columns are 0. Shifting lane l left by 14 - 2p and arithmetically right by 14
yields t_j as int16 for the sixteen lanes at once, so one AVX2 register of a block gives 8 vectors of 16 weights in
at most 2 shifts each, with no table and no correction term; the 16 weights of plane p are the contiguous columns
16 p .. 16 p + 15 of the block. This is a resident form only: checkpoints keep the 1.6-bit format of `packing.py`.

Kernels (`ternary_matmul_2bit`):
- CPU: a C++ torch operator library (`ternary_cpu_source.py`: `ternary_mm`, `ternary_mm_fused` for q/k/v and
  gate/up in one call, `int8_mm` for the int8 head), compiled with the system's C++ compiler against torch's headers
  at first use, for the best instruction-set variant the CPU has (`CPU_VARIANTS`, from /proc/cpuinfo: AVX-512 BF16
  with GFNI, AVX-512 VNNI, AVX-512BW, AVX-VNNI, AVX2, or portable C++), cached in a directory keyed by variant and
  source hash, and loaded with `torch.ops.load_library`: eager forwards and torch.compile graphs call the same
  operator, with no Python in between. Activations are quantized per 128-column block to int16
  (error at most 2^-16 of the block's largest magnitude per element: below bf16's and fp16's own rounding) and
  multiplied with the int16 weights by `madd` / `vpdpwssd` (16 weights per instruction, exact int32 block sums); fp32
  activations take a second int16 pass over the residual of the first, which keeps them fp32-exact. A GEMV for
  decode and a 4-row register tile for more tokens, on torch's intra-op thread pool. On AVX-512 VNNI, the decode
  GEMV of one bf16 / fp16 token takes the weights as t + 1 in {0, 1, 2}, a byte each (64 per GFNI affine transform on
  the avx512bf16 variant, per shift and mask without GFNI), and each int16 code (at most 32639 there) as two signed
  bytes for two `vpdpbusd`: the same exact int32 block sums for 4 instructions per 64 weights instead of 6. fp32
  activations from
  GEMM_MIN_TOKENS tokens on (bf16 / fp16 from GEMM_MIN_TOKENS_16BIT) unpack T to fp32 in row chunks for torch's
  fp32 GEMM instead. On CPUs with AVX-512 BF16 (the avx512bf16 variant), bf16 activations of BF16_GEMM_MIN_TOKENS
  tokens or more skip the quantization: T is unpacked to bf16 16 rows at a time and multiplied by the activations as
  they are with `vdpbf16ps` (exact products, fp32 sums, one rounding of the output; about twice the fp32 GEMM's
  speed).
  The operators keep no state between calls but a per-thread scratch buffer: one model serves several threads.
  Int8 activations (`activation_bits=8`, llama.cpp's route; off by default, `int8_activations=True` at load): every
  call (on the avx512bf16 variant, every call of fewer than BF16_GEMM_MIN_TOKENS_INT8 bf16 tokens; more take the
  exact bf16 route) quantizes the activations to int8 per 128-column block (s_b = the block's largest |x_j c_j| / 127,
  c the column scales) and multiplies them with the weights stored as t + 1 in {0, 1, 2} by `maddubs` (`vpdpbusd`
  with VNNI), subtracting the codes' sums once per token. Its error, for output row r:
      |y_r - exact_r| <= |row_scale_r| * sum over blocks b of nnz(T_r in b) * s_b / 2
  plus fp32 accumulation and the rounding of y to x's dtype (the exact route's int16 codes: the same with s_b / 258
  in place of s_b / 2; s_b / 257 for the two-byte codes of the AVX-512 VNNI decode GEMV). tests/test_kernels.py
  checks these bounds against float64.
- CUDA: a Triton kernel (decode and small batches; fp32 products).
Either is optional: `cpu_kernel()` / `triton_available()` say whether they can run, and the callers fall back to
torch's int4 / int8 kernels when they cannot. Scales are exact: per-row scales multiply the fp32 accumulator,
per-column scales are folded into the activations in fp32 before the product.

Only the standard library, torch and (optionally) triton are imported: this file is also remote code.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers.utils import logging

from .ternary_cpu_source import CPU_SOURCE

logger = logging.get_logger(__name__)

BLOCK = 128  # weights per 32-byte block of a row
# Set to "0" to keep the CPU kernel from being built or used (the int4 path is used instead).
KERNEL_ENV = "SPECTRA_TERNARY_KERNEL"
# Where the compiled CPU kernel is cached (default: $XDG_CACHE_HOME/spectra_hf/kernels or ~/.cache/...).
CACHE_ENV = "SPECTRA_KERNEL_CACHE"


def padded_in_features(in_features: int) -> int:
    return -(-in_features // BLOCK) * BLOCK


def pack_2bit(digits: torch.Tensor) -> torch.Tensor:
    """T (int8 [out, in], values in {-1, 0, +1}) -> the 2-bit resident layout, uint8 [out, padded_in / 4]."""
    out_features, in_features = digits.shape
    padded = padded_in_features(in_features)
    codes = torch.zeros(out_features, padded, dtype=torch.uint8, device=digits.device)
    codes[:, :in_features] = digits.to(torch.uint8) & 3  # two's complement: -1 -> 0b11
    # [out, block, plane p, lane l] -> [out, block, lane l, byte h of the lane, 4 codes] (code p = 4 h + i sits at
    # bits 2 i of the lane's byte h: the lane's little-endian bits 2 p..2 p + 1)
    codes = codes.reshape(out_features, padded // BLOCK, 8, 16).transpose(2, 3).reshape(out_features, -1, 16, 2, 4)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=digits.device)
    return (codes << shifts).sum(dim=-1, dtype=torch.uint8).reshape(out_features, padded // 4)


def unpack_2bit(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of `pack_2bit`: uint8 [out, padded_in / 4] -> T as int8 [out, in_features]."""
    out_features = packed.shape[0]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device)
    codes = (packed.reshape(out_features, -1, 16, 2, 1) >> shifts) & 3  # [out, block, lane, h, i]
    codes = codes.reshape(out_features, -1, 16, 8).transpose(2, 3).reshape(out_features, -1)[:, :in_features]
    return codes.to(torch.int8) - 4 * (codes == 3).to(torch.int8)


def release_freed_memory() -> None:
    """Give the C heap's freed pages back to the OS (glibc `malloc_trim`; a no-op elsewhere). Preparing the layers
    frees many 10-50 MB temporaries below glibc's mmap threshold; without this the process keeps them resident
    (measured: +500 MB over 10 layers of 5632 x 2048, against 28 MB of 2-bit weights)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages (a file's clean pages are dropped, to be re-read if used)


def _in_file_mapping(start: int, end: int) -> bool:
    """Whether the addresses [start, end) lie in one memory map of a file (/proc/self/maps: inode not 0)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(bound, 16) for bound in fields[0].split("-"))
            if low <= start and end <= high:
                return fields[4] != "0"
    return False


def release_pages(tensor: torch.Tensor) -> None:
    """Let the OS reclaim the memory pages wholly inside `tensor`'s storage where it is a view of a memory-mapped
    file (Linux `madvise(MADV_PAGEOUT)`; nothing elsewhere, nor for other memory, which would be swapped out). For
    checkpoint bytes read once and no longer needed: the map stays open while the embedding and LM head are views of
    it, and the pages it read stay counted in the process's RSS (measured: the 1.6-bit bytes of a 390M TriLM, 55
    MiB, after their conversion to 2-bit). The file's contents are untouched; reading them again re-reads the file."""
    storage = tensor.untyped_storage()
    if storage.device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    page = mmap.PAGESIZE
    start = -(-storage.data_ptr() // page) * page  # the first page boundary inside
    end = (storage.data_ptr() + storage.nbytes()) // page * page
    with contextlib.suppress(OSError, AttributeError, ValueError, IndexError):
        if end > start and _in_file_mapping(start, end):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_PAGEOUT)


# ----------------------------------------------------------------------------------------------------------------- CPU

CPU_VARIANTS = ("avx512bf16", "avx512vnni", "avx512bw", "avxvnni", "avx2", "portable")  # preferred first
# /proc/cpuinfo flags each variant needs, and the compiler flags it is built with
_VARIANT_CPU_FLAGS = {
    "avx512bf16": (
        "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "gfni",
    ),
    "avx512vnni": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"),
    "avx512bw": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "avxvnni": ("avx2", "fma", "f16c", "avx_vnni"),
    "avx2": ("avx2", "fma", "f16c"),
    "portable": (),
}
_VARIANT_COMPILER_FLAGS = {
    "avx512bf16": (
        "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni",
        "-mavx512bf16", "-mgfni",
    ),
    "avx512vnni": ("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"),
    "avx512bw": ("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"),
    "avxvnni": ("-mavx2", "-mfma", "-mf16c", "-mavxvnni"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
    "portable": (),
}
# Set to one of CPU_VARIANTS to build that variant instead of the best one the CPU has (refused if it lacks it).
VARIANT_ENV = "SPECTRA_KERNEL_VARIANT"
# -fopenmp: torch's at::parallel_for is a `#pragma omp parallel` inside its header; without the flag every product
# would run on one thread (libgomp resolves to the copy torch loaded, through the rpath below)
_COMMON_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp")
BUILD_TIMEOUT_S = 900


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def supported_variants(flags: frozenset[str]) -> tuple[str, ...]:
    """The variants a CPU with `flags` can run, preferred first (always ending with "portable")."""
    return tuple(v for v in CPU_VARIANTS if all(flag in flags for flag in _VARIANT_CPU_FLAGS[v]))


def choose_variant(flags: frozenset[str], requested: str | None = None) -> str:
    """The variant to build for a CPU with `flags`: `requested` (one of CPU_VARIANTS) if the CPU has it, else the
    best it has. Raises ValueError for an unknown or unsupported request."""
    available = supported_variants(flags)
    if not requested:
        return available[0]
    if requested not in CPU_VARIANTS:
        raise ValueError(f"{VARIANT_ENV}={requested!r} is not a kernel variant: choose one of {CPU_VARIANTS}")
    if requested not in available:
        raise ValueError(
            f"{VARIANT_ENV}={requested!r}: this CPU lacks {requested}'s instructions; it runs {available}"
        )
    return requested


def kernel_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spectra_hf" / "kernels"


class CpuKernel:
    """The loaded CPU operator library of one variant: `ops` is its torch.ops namespace (`ternary_mm`,
    `ternary_mm_fused`, `int8_mm`, `ternary_unpack`, the decoder block steps `attention_inputs`, `decode_attention`
    and `attention_output_and_mlp`, a whole decode step's blocks `decode_layers`, `set_allocation_limit`; see
    ternary_cpu_source.py)."""

    def __init__(self, variant: str, namespace: str, path: Path, build_seconds: float | None) -> None:
        self.variant, self.namespace, self.path, self.build_seconds = variant, namespace, path, build_seconds
        ops = getattr(torch.ops, namespace)
        self.ops = ops
        # OpOverloads: called directly they skip the overload resolution of torch.ops.<ns>.<name>(...)
        self.mm = ops.ternary_mm.default
        self.mm_fused = ops.ternary_mm_fused.default
        self.int8_mm = ops.int8_mm.default
        self.dense_mm = ops.dense_mm.default
        self.unpack = ops.ternary_unpack.default
        self.attention_inputs = ops.attention_inputs.default
        self.attention_output_and_mlp = ops.attention_output_and_mlp.default
        self.decode_attention = ops.decode_attention.default
        self.decode_layers = ops.decode_layers.default


# How a built library is named and what it registers; part of the cache key, so a library cached under an earlier
# scheme is never loaded for this one (2: the namespace carries the digest).
_LIBRARY_FORMAT = "2"


def library_name(variant: str, compiler: str) -> tuple[str, str]:
    """(torch.ops namespace, file name) of a variant's library: both carry the variant and a hash of the source, the
    flags, the compiler and the torch version, so that any of them changing builds (and names) it anew."""
    flags = " ".join((*_COMMON_FLAGS, *_VARIANT_COMPILER_FLAGS[variant]))
    key = "\n".join((_LIBRARY_FORMAT, CPU_SOURCE, flags, compiler, torch.__version__))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    # the namespace carries the digest too: torch.compile's on-disk caches key compiled graphs by operator names, not
    # schemas, so a changed operator under the old name would be called with a stale graph's arguments
    return f"spectra_ternary_{variant}_{digest}", f"spectra_ternary_{variant}_{digest}.so"


def build_cpu_library(variant: str, *, compiler: str, cache_dir: Path) -> tuple[Path, float | None]:
    """Compile `variant`'s library into `cache_dir` unless it is there already: (its path, the build's seconds or None
    if it was cached). Processes building at once take an exclusive lock (fcntl) on the cache directory's lock
    file: the second waits for the first's library instead of compiling it again. Written under a temporary name,
    then renamed: a library is complete or absent. Raises OSError or subprocess.SubprocessError."""
    import fcntl
    import time

    namespace, file_name = library_name(variant, compiler)
    target = cache_dir / file_name
    if target.exists():
        return target, None
    from torch.utils import cpp_extension  # (only to build: it imports setuptools, ~60 ms and 2 MiB)

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if target.exists():  # another process built it while this one waited
            return target, None
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=cache_dir) as build:
            source = Path(build) / "ternary2bit.cpp"
            source.write_text(CPU_SOURCE.replace("NAMESPACE", namespace))
            partial = Path(build) / file_name
            includes = [arg for path in cpp_extension.include_paths() for arg in ("-isystem", path)]
            library_dir = cpp_extension.library_paths()[0]
            abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
            logger.warning(f"building the 2-bit ternary CPU kernel ({variant}) with {compiler} into {target}")
            subprocess.run(
                [compiler, *_COMMON_FLAGS, *_VARIANT_COMPILER_FLAGS[variant], abi, *includes, str(source),
                 "-o", str(partial), f"-L{library_dir}", "-lc10", "-ltorch_cpu", "-ltorch",
                 f"-Wl,-rpath,{library_dir}"],
                check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
            )
            os.replace(partial, target)
        seconds = time.perf_counter() - started
        logger.warning(f"built the 2-bit ternary CPU kernel ({variant}) in {seconds:.1f} s (cached for later runs)")
    return target, seconds


def load_cpu_library(variant: str, *, compiler: str, cache_dir: Path) -> CpuKernel:
    """Build (or find cached) and load `variant`'s operator library. Its namespace is loaded once per process (by
    this copy of the file or another: the package and remote code share torch.ops); a later load reuses it."""
    namespace, _ = library_name(variant, compiler)
    path, build_seconds = build_cpu_library(variant, compiler=compiler, cache_dir=cache_dir)
    if namespace not in _loaded_namespaces:
        if not hasattr(getattr(torch.ops, namespace), "ternary_mm"):
            torch.ops.load_library(str(path))
            _register_fake_kernels(namespace)
        _loaded_namespaces[namespace] = CpuKernel(variant, namespace, path, build_seconds)
    return _loaded_namespaces[namespace]


def _register_fake_kernels(namespace: str) -> None:
    """Shapes and dtypes of the operators' outputs, for torch.compile's tracing (no data)."""

    def ternary_mm(x, packed, row_scale, col_scale, activation_bits):
        return x.new_empty((*x.shape[:-1], packed.shape[0]))

    def ternary_mm_fused(x, packed, row_scale, outs, activation_bits):
        return [x.new_empty((*x.shape[:-1], rows)) for rows in outs]

    def int8_mm(x, weight, row_scale):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    def dense_mm(x, weight):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    def ternary_unpack(packed, in_features):
        return packed.new_empty((packed.shape[0], in_features), dtype=torch.float32)

    def attention_inputs(hidden, norm_weight, eps, packed, row_scale, outs, cos, sin, head_dim, activation_bits):
        return [hidden.new_empty((*hidden.shape[:-1], rows)) for rows in outs]

    def attention_output_and_mlp(attention, residual, *weights_and_options):
        return residual.new_empty(residual.shape)

    def decode_attention(query, key, value, mask, scaling):
        return query.new_empty(query.shape)

    def decode_layers(hidden, blocks, keys, values, cos, sin, mask, eps, qkv_outs, gate_up_outs, head_dim, scaling,
                      activation_bits):
        return hidden.new_empty(hidden.shape)  # (keys and values: written in place)

    for fake in (ternary_mm, ternary_mm_fused, int8_mm, dense_mm, ternary_unpack, attention_inputs,
                 attention_output_and_mlp, decode_attention, decode_layers):
        torch.library.register_fake(f"{namespace}::{fake.__name__}")(fake)


_loaded_namespaces: dict[str, CpuKernel] = {}
# (requested variant, compiler, cache dir) -> (kernel, status)
_cpu_kernels: dict[tuple[str, str, str], tuple[CpuKernel | None, str]] = {}
# The kernel that forwards use (the first that loaded), read without resolving the environment on every call.
forward_kernel: CpuKernel | None = None


def _kernel_key(compiler: str | None, cache_dir: Path | None) -> tuple[str, str, str]:
    compiler = compiler or os.environ.get("CXX") or "c++"
    variant = os.environ.get(VARIANT_ENV) or ""
    return variant, compiler, str(Path(cache_dir) if cache_dir is not None else kernel_cache_dir())


def cpu_kernel(*, compiler: str | None = None, cache_dir: Path | None = None) -> CpuKernel | None:
    """The CPU operator library for this CPU's best variant (or $SPECTRA_KERNEL_VARIANT's), built at first use with
    `compiler` (default $CXX or c++) and cached by variant and source hash in `cache_dir`; None where it cannot be
    built or loaded, the reason logged once (`cpu_kernel_status()`)."""
    global forward_kernel
    if os.environ.get(KERNEL_ENV, "1") == "0":
        return None
    key = _kernel_key(compiler, cache_dir)
    if key not in _cpu_kernels:
        _cpu_kernels[key] = _load_cpu_kernel(*key)
        forward_kernel = forward_kernel or _cpu_kernels[key][0]
    return _cpu_kernels[key][0]


def _load_cpu_kernel(requested: str, compiler: str, cache_dir: str) -> tuple[CpuKernel | None, str]:
    kernel = None
    try:
        variant = choose_variant(cpu_flags(), requested or None)
        kernel = load_cpu_library(variant, compiler=compiler, cache_dir=Path(cache_dir))
        built = "" if kernel.build_seconds is None else f", built in {kernel.build_seconds:.0f} s"
        status = f"C++ torch operator, {variant} variant ({kernel.path}{built})"
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        last_line = detail.strip().splitlines()[-1] if detail.strip() else repr(error)
        reason = f"it could not be built with {compiler!r}: {last_line}"
        status = f"unavailable ({reason})"
        logger.warning(
            f"the 2-bit ternary CPU kernel is unavailable: {reason}. Packed TriLMs use torch's int4 kernel instead "
            "(install a C++ compiler, e.g. g++, for the faster 2-bit path)."
        )
    return kernel, status


def cpu_kernel_status(*, compiler: str | None = None, cache_dir: Path | None = None) -> str:
    """One line: whether the CPU 2-bit kernel is in force (naming its variant), and why not (builds it if needed)."""
    if os.environ.get(KERNEL_ENV, "1") == "0":
        return f"disabled by {KERNEL_ENV}=0"
    cpu_kernel(compiler=compiler, cache_dir=cache_dir)
    return _cpu_kernels[_kernel_key(compiler, cache_dir)][1]


# From this many fp32 tokens on (prefill), the C++ operator unpacks T to fp32 in row chunks and multiplies with
# torch's fp32 GEMM instead of the register tile's two int16 passes (measured at 5120 x 1792, 2 threads, idle: fp32
# 32 tokens 7.8 ms tile vs 9.1 ms GEMM, 64 tokens 16.9 vs 11.7); bf16 / fp16 activations (one int16 pass) from
# GEMM_MIN_TOKENS_16BIT on (5120 x 1792, load 0.8: 128 tokens 24.2 ms tile vs 31.3 GEMM, 512 tokens 74-91 vs 62-79;
# 1536 x 512: 256 tokens 4.9 vs 3.4). The C++ file holds the same constants.
GEMM_MIN_TOKENS = 48
GEMM_MIN_TOKENS_16BIT = 192
# The avx512bf16 variant multiplies bf16 activations of this many tokens or more by the bf16-unpacked weights with
# vdpbf16ps instead (exact products, fp32 sums, one rounding; no quantization): at 2 threads, 2048 x 11264, 4 tokens
# 0.75 ms against the int16 tile's 0.84, 16 tokens 2.2 against 3.7, 128 tokens 15.9 against 29.6; 3 tokens 0.86
# against 0.75 (AMD EPYC with AVX-512 BF16, 2026-12-07, load ~1).
BF16_GEMM_MIN_TOKENS = 4
# ... and bf16 activations the caller asked to quantize to int8 from this many tokens on: the int8 tile is faster
# below (4 tokens 0.60 against 0.75 ms, 16 tokens 2.7 against 2.2 ms at 2048 x 11264), the bf16 route is faster above
# and exact (1.1B prefill of 512 tokens: 142-152 against 109-127 tok/s)
BF16_GEMM_MIN_TOKENS_INT8 = 16


def _loaded_cpu_kernel() -> CpuKernel:
    kernel = forward_kernel or cpu_kernel()
    if kernel is None:
        raise RuntimeError(
            f"the 2-bit ternary CPU kernel is {cpu_kernel_status()}: use ternary_inference='int4' or 'auto'"
        )
    return kernel


def int8_matmul_cpu(x: torch.Tensor, weight: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor | None:
    """Y = X W^T * row_scale for int8 W [out, in] (in a multiple of 16) and float32 row_scale [out] on CPU, by the
    C++ operator (activations as in the 2-bit path: int16 per block, fp32 in two passes); x [..., in] -> [..., out]
    in x's dtype. None where it cannot take it (no kernel, another device, in not a multiple of 16)."""
    if x.device.type != "cpu" or weight.shape[1] % 16:
        return None
    kernel = forward_kernel or cpu_kernel()
    return None if kernel is None else kernel.int8_mm(x, weight, row_scale)


# ------------------------------------------------------------------------------------------------------------- Triton

_triton_kernels: dict[bool, object] = {}
triton = tl = None  # imported at first use (optional dependency)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_kernel():
    """The Triton kernel, built on first use (per TRITON_INTERPRET setting, so tests can run it interpreted)."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if interpret in _triton_kernels:
        return _triton_kernels[interpret]
    global triton, tl  # module globals: the interpreter patches the kernel's globals, not closure variables
    try:
        import triton
        import triton.language as tl
    except ImportError as error:
        raise RuntimeError("the 2-bit ternary GPU kernel needs triton: pip install triton") from error

    @triton.jit
    def ternary_2bit_kernel(
        x_ptr, w_ptr, row_scale_ptr, col_scale_ptr, y_ptr, M, N, K, KP, stride_xm, stride_ym,
        # (triton.jit reads these markers; `tl` is a lazily imported module global, so mypy cannot resolve them)
        HAS_COL_SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  # type: ignore[name-defined]
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        tokens = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        lanes = tl.arange(0, 16)
        planes = tl.arange(0, 8)
        # column j = 16 p + l of a block, as a [8, 16] -> [128] index; the shift that brings code p to bits 30..31
        columns = tl.reshape(planes[:, None] * 16 + lanes[None, :], (128,))
        shifts = tl.reshape(tl.broadcast_to(30 - 2 * planes[:, None], (8, 16)), (128,))
        lane_index = tl.reshape(tl.broadcast_to(lanes[None, :], (8, 16)), (128,))
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # (tl.zeros is a jit function: not interpretable late)
        for block in range(0, KP // 128):
            # lane l of every row's block, sign-extended to int32 (codes stay at bits 2p): [BLOCK_N, 128]
            words = tl.load(
                w_ptr + rows[:, None] * (KP // 8) + block * 16 + lane_index[None, :], mask=rows[:, None] < N, other=0
            ).to(tl.int32)
            digits = ((words << shifts[None, :]) >> 30).to(tl.float32)  # arithmetic shift: int32 words
            k_index = block * 128 + columns
            x = tl.load(
                x_ptr + tokens[:, None] * stride_xm + k_index[None, :],
                mask=(tokens[:, None] < M) & (k_index[None, :] < K), other=0.0,
            ).to(tl.float32)
            if HAS_COL_SCALE:
                x = x * tl.load(col_scale_ptr + k_index, mask=k_index < K, other=0.0)[None, :]
            # fp32 products for every input dtype: exact within fp32, and the bf16 dot is not interpretable on CPU
            acc += tl.dot(x, tl.trans(digits), input_precision="ieee")
        acc = acc * tl.load(row_scale_ptr + rows, mask=rows < N, other=0.0)[None, :]
        tl.store(
            y_ptr + tokens[:, None] * stride_ym + rows[None, :], acc, mask=(tokens[:, None] < M) & (rows[None, :] < N)
        )

    _triton_kernels[interpret] = ternary_2bit_kernel
    return ternary_2bit_kernel


def _triton_matmul(
    x: torch.Tensor, packed: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor | None
) -> torch.Tensor:
    kernel = _triton_kernel()
    out_features, in_features = packed.shape[0], x.shape[-1]
    flat = x.reshape(-1, in_features)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    tokens = flat.shape[0]
    y = torch.empty(tokens, out_features, dtype=torch.float32, device=x.device)
    block_m, block_n = 16, 32
    grid = (-(-tokens // block_m), -(-out_features // block_n))
    kernel[grid](
        flat, packed.view(torch.int16), row_scale, col_scale if col_scale is not None else row_scale, y,
        tokens, out_features, in_features, packed.shape[1] * 4, flat.stride(0), y.stride(0),
        HAS_COL_SCALE=col_scale is not None, BLOCK_M=block_m, BLOCK_N=block_n,
    )
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


def ternary_matmul_2bit(
    x: torch.Tensor,
    packed: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor | None = None,
    activation_bits: int = 16,
) -> torch.Tensor:
    """Y = (X * col_scale) T^T * row_scale: x [..., in] (any float dtype), packed uint8 [out, padded_in / 4]
    (`pack_2bit`), row_scale float32 [out], col_scale float32 [in] or None -> [..., out] in x's dtype.

    The Triton kernel on CUDA (or anywhere with TRITON_INTERPRET=1 and a CPU tensor), the C++ operator on CPU.
    `activation_bits=8` (CPU operator only) quantizes the activations to int8 per 128-column block instead of the
    exact route's int16 (its error bound: the module docstring).
    """
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return _loaded_cpu_kernel().mm(x, packed, row_scale, col_scale, activation_bits)
    if activation_bits != 16:
        raise RuntimeError("int8 activations are an option of the CPU 2-bit operator only: load without them here")
    if x.device.type in ("cuda", "cpu"):
        return _triton_matmul(x, packed, row_scale, col_scale)
    raise RuntimeError(f"the 2-bit ternary path has no kernel for {x.device.type}: use ternary_inference='dense'")


def ternary_matmul_2bit_fused(
    x: torch.Tensor, packed: torch.Tensor, row_scale: torch.Tensor, outs: list[int], activation_bits: int = 16
) -> list[torch.Tensor]:
    """Several layers' products with one input in one call: packed holds their 2-bit rows stacked ([sum(outs),
    padded_in / 4]), row_scale their row scales; x [..., in] -> one output [..., outs[i]] per layer, in x's dtype."""
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return _loaded_cpu_kernel().mm_fused(x, packed, row_scale, outs, activation_bits)
    return list(ternary_matmul_2bit(x, packed, row_scale, None, activation_bits).split(outs, dim=-1))
