"""2-bit resident ternary weights and the kernels that read them directly (the "2bit" inference path).

Layout (`pack_2bit`, uint8 [out, in_padded / 4], in_padded = in rounded up to a multiple of 128): each row is a run
of 32-byte blocks of 128 weights. Inside block b, the 32-bit little-endian word l (l = 0..7) holds in its bits
2p..2p+1 (p = 0..15) the weight j = 128 b + 8 p + l as a two's-complement 2-bit code (0 -> 00, +1 -> 01, -1 -> 11);
padding columns are 0. Shifting word l left by 30 - 2p and arithmetically right by 30 yields t_j for the eight lanes
l at once, so one AVX2 register of a block gives 16 vectors of 8 weights in 2 shifts each, with no table and no
correction term. This is a resident form only: checkpoints keep the 1.6-bit format of `packing.py`.

Kernels (`ternary_matmul_2bit`): on CPU a small C++ file (AVX2 + FMA, OpenMP over output rows; a GEMV for decode
and a 4-token register tile for prefill; fp32 accumulation, bf16 or fp32 activations in and out) compiled with the
system's C++ compiler at first use into a cache directory and loaded with ctypes; on CUDA a Triton kernel (decode
and small batches). Either is optional: `cpu_kernel()` / `triton_available()` say whether they can run, and the
callers fall back to torch's int4 / int8 kernels when they cannot. Scales are exact: per-row scales multiply the
fp32 accumulator, per-column scales are folded into the activations in fp32 before the product.

Only the standard library, torch and (optionally) triton are imported: this file is also remote code.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from transformers.utils import logging

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
    # [out, block, p, lane] -> [out, block, lane, byte q, 4 codes] (code p = 4 q + i sits at bits 2 i of byte q)
    codes = codes.reshape(out_features, padded // BLOCK, 16, 8).transpose(2, 3).reshape(out_features, -1, 8, 4, 4)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=digits.device)
    return (codes << shifts).sum(dim=-1, dtype=torch.uint8).reshape(out_features, padded // 4)


def unpack_2bit(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of `pack_2bit`: uint8 [out, padded_in / 4] -> T as int8 [out, in_features]."""
    out_features = packed.shape[0]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device)
    codes = (packed.reshape(out_features, -1, 8, 4, 1) >> shifts) & 3  # [out, block, lane, q, i]
    codes = codes.reshape(out_features, -1, 8, 16).transpose(2, 3).reshape(out_features, -1)[:, :in_features]
    return codes.to(torch.int8) - 4 * (codes == 3).to(torch.int8)


def release_freed_memory() -> None:
    """Give the C heap's freed pages back to the OS (glibc `malloc_trim`; a no-op elsewhere). Preparing the layers
    frees many 10-50 MB temporaries below glibc's mmap threshold; without this the process keeps them resident
    (measured: +500 MB over 10 layers of 5632 x 2048, against 28 MB of 2-bit weights)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ----------------------------------------------------------------------------------------------------------------- CPU

_CPU_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t v) { uint32_t u = (uint32_t)v << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                              /* round to nearest even */
    return (uint16_t)(u >> 16);
}
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s); s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}
/* the 8 weights of plane p of a block as floats in {-1, 0, +1} */
#define PLANE(v, p) _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32((v), 30 - 2 * (p)), 30))

/* MT tokens (rows of x, stride kp) against one weight row; out[i] = sum_j t_j x[i][j] */
template <int MT>
static inline void row_dot(const uint8_t* w, const float* x, int64_t kp, int64_t nblocks, float* out) {
    __m256 acc[MT][2];
    for (int i = 0; i < MT; i++) { acc[i][0] = _mm256_setzero_ps(); acc[i][1] = _mm256_setzero_ps(); }
    for (int64_t b = 0; b < nblocks; b++) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(w + 32 * b));
        const float* xb = x + BLOCK_W * b;
#define STEP(p) { const __m256 t = PLANE(v, p); \
        for (int i = 0; i < MT; i++) \
            acc[i][(p) & 1] = _mm256_fmadd_ps(t, _mm256_loadu_ps(xb + i * kp + 8 * (p)), acc[i][(p) & 1]); }
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
        STEP(8) STEP(9) STEP(10) STEP(11) STEP(12) STEP(13) STEP(14) STEP(15)
#undef STEP
    }
    for (int i = 0; i < MT; i++) out[i] = hsum(_mm256_add_ps(acc[i][0], acc[i][1]));
}

extern "C" {

int spectra_ternary_abi(void) { return 1; }

/* y[m, r] = row_scale[r] * sum_j t[r, j] * x[m, j] * (col_scale ? col_scale[j] : 1)
   x: [m, k] fp32 (x_bf16 = 0) or bf16 (x_bf16 = 1), row stride x_stride; w: [n, kp / 4] 2-bit layout;
   y: [m, n] contiguous, fp32 or bf16 (y_bf16). */
void spectra_ternary_mm(const void* x, int x_bf16, int64_t x_stride, const float* col_scale, int64_t m, int64_t k,
                        const uint8_t* w, int64_t n, int64_t kp, const float* row_scale,
                        void* y, int y_bf16, int threads) {
    float* xf = (float*)aligned_alloc(64, (size_t)(((m * kp * 4) + 63) / 64 * 64));
    #pragma omp parallel for num_threads(threads) schedule(static) if (m * k > 65536)
    for (int64_t i = 0; i < m; i++) {
        float* dst = xf + i * kp;
        for (int64_t j = 0; j < k; j++) {
            float value = x_bf16 ? bf16_to_f32(((const uint16_t*)x)[i * x_stride + j])
                                 : ((const float*)x)[i * x_stride + j];
            dst[j] = col_scale ? value * col_scale[j] : value;
        }
        for (int64_t j = k; j < kp; j++) dst[j] = 0.0f;
    }
    const int64_t nblocks = kp / BLOCK_W;
    const int64_t row_chunk = 16, token_chunk = 16;
    const int64_t row_tasks = (n + row_chunk - 1) / row_chunk;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t task = 0; task < row_tasks; task++) {
        const int64_t r0 = task * row_chunk, r1 = r0 + row_chunk < n ? r0 + row_chunk : n;
        for (int64_t m0 = 0; m0 < m; m0 += token_chunk) {
            const int64_t m1 = m0 + token_chunk < m ? m0 + token_chunk : m;
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t* wr = w + r * (kp / 4);
                const float scale = row_scale[r];
                float out[4];
                int64_t i = m0;
                for (; i + 4 <= m1; i += 4) {
                    row_dot<4>(wr, xf + i * kp, kp, nblocks, out);
                    for (int q = 0; q < 4; q++) {
                        if (y_bf16) ((uint16_t*)y)[(i + q) * n + r] = f32_to_bf16(out[q] * scale);
                        else ((float*)y)[(i + q) * n + r] = out[q] * scale;
                    }
                }
                for (; i < m1; i++) {
                    row_dot<1>(wr, xf + i * kp, kp, nblocks, out);
                    if (y_bf16) ((uint16_t*)y)[i * n + r] = f32_to_bf16(out[0] * scale);
                    else ((float*)y)[i * n + r] = out[0] * scale;
                }
            }
        }
    }
    free(xf);
}

/* rows [r0, r1) of T as fp32 into out [r1 - r0, k] (for prefill: unpack once, then a BLAS GEMM) */
void spectra_ternary_unpack(const uint8_t* w, int64_t kp, int64_t k, int64_t r0, int64_t r1, float* out, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t* wr = w + r * (kp / 4);
        float* dst = out + (r - r0) * k;
        float tail[BLOCK_W];
        for (int64_t b = 0; b < kp / BLOCK_W; b++) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(wr + 32 * b));
            float* target = (b + 1) * BLOCK_W <= k ? dst + b * BLOCK_W : tail;
#define STEP(p) _mm256_storeu_ps(target + 8 * (p), PLANE(v, p));
            STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
            STEP(8) STEP(9) STEP(10) STEP(11) STEP(12) STEP(13) STEP(14) STEP(15)
#undef STEP
            if (target == tail) memcpy(dst + b * BLOCK_W, tail, sizeof(float) * (size_t)(k - b * BLOCK_W));
        }
    }
}

}
""".replace("BLOCK_W", str(BLOCK))

_CPU_FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
_cpu_kernels: dict[tuple[str, str], tuple[ctypes.CDLL | None, str]] = {}  # (compiler, cache dir) -> (kernel, status)


def kernel_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spectra_hf" / "kernels"


def _cpu_supported() -> str | None:
    """Why the CPU kernel cannot run here, or None."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"the CPU has no AVX2 + FMA (torch reports {capability})"
    return None


def _kernel_key(compiler: str | None, cache_dir: Path | None) -> tuple[str, str]:
    compiler = compiler or os.environ.get("CXX") or "c++"
    return compiler, str(Path(cache_dir) if cache_dir is not None else kernel_cache_dir())


def cpu_kernel(*, compiler: str | None = None, cache_dir: Path | None = None) -> ctypes.CDLL | None:
    """The compiled CPU kernel (built at first use with `compiler`, default $CXX or c++, cached by source hash in
    `cache_dir`), or None where it cannot be built or loaded; the reason is logged once (`cpu_kernel_status()`)."""
    if os.environ.get(KERNEL_ENV, "1") == "0":
        return None
    key = _kernel_key(compiler, cache_dir)
    if key not in _cpu_kernels:
        _cpu_kernels[key] = _load_cpu_kernel(*key)
    return _cpu_kernels[key][0]


def _load_cpu_kernel(compiler: str, cache_dir_name: str) -> tuple[ctypes.CDLL | None, str]:
    cache_dir = Path(cache_dir_name)
    reason = _cpu_supported()
    library = None
    if reason is None:
        digest = hashlib.sha256((_CPU_SOURCE + " ".join(_CPU_FLAGS) + compiler).encode()).hexdigest()[:16]
        target = cache_dir / f"spectra_ternary2bit_{digest}.so"
        try:
            if not target.exists():
                cache_dir.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=cache_dir) as build:
                    source = Path(build) / "ternary2bit.cpp"
                    source.write_text(_CPU_SOURCE)
                    partial = Path(build) / target.name
                    logger.info(f"compiling the 2-bit ternary CPU kernel with {compiler} into {target}")
                    subprocess.run(
                        [compiler, *_CPU_FLAGS, str(source), "-o", str(partial)],
                        check=True, capture_output=True, text=True, timeout=300,
                    )
                    os.replace(partial, target)  # complete or absent: never a half-written library
            library = ctypes.CDLL(str(target))
            library.spectra_ternary_mm.restype = None
            library.spectra_ternary_mm.argtypes = [
                ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                ctypes.c_int,
            ]
            library.spectra_ternary_unpack.restype = None
            library.spectra_ternary_unpack.argtypes = [
                ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                ctypes.c_int,
            ]
            status = f"C++ AVX2 kernel ({target})"
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or str(error)
            last_line = detail.strip().splitlines()[-1] if detail.strip() else error
            reason = f"it could not be built with {compiler!r}: {last_line}"
            library = None
    if library is None:
        status = f"unavailable ({reason})"
        logger.warning(
            f"the 2-bit ternary CPU kernel is unavailable: {reason}. Packed TriLMs use torch's int4 kernel instead "
            "(install a C++ compiler, e.g. g++, for the faster 2-bit path)."
        )
    return library, status


def cpu_kernel_status(*, compiler: str | None = None, cache_dir: Path | None = None) -> str:
    """One line: whether the CPU 2-bit kernel is in force, and why not (builds it if it was not tried yet)."""
    if os.environ.get(KERNEL_ENV, "1") == "0":
        return f"disabled by {KERNEL_ENV}=0"
    cpu_kernel(compiler=compiler, cache_dir=cache_dir)
    return _cpu_kernels[_kernel_key(compiler, cache_dir)][1]


# From this many tokens on (prefill), unpacking T to fp32 in row chunks and multiplying with torch's GEMM beats the
# register-tiled kernel, whose cost grows with tokens x weights (bench/bench_inference.py measures both).
GEMM_MIN_TOKENS = 128
_GEMM_ROW_CHUNK_ELEMENTS = 1 << 22  # at most 16 MiB of unpacked fp32 weights alive at a time


def _cpu_unpacked_gemm(
    library: ctypes.CDLL,
    flat: torch.Tensor,
    packed: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor | None,
) -> torch.Tensor:
    """[tokens, in] -> fp32 [tokens, out] by unpacking T chunk by chunk into fp32 and one GEMM per chunk."""
    out_features, in_features = packed.shape[0], flat.shape[1]
    x = flat.float()
    if col_scale is not None:
        x = x * col_scale
    y = torch.empty(flat.shape[0], out_features, dtype=torch.float32)
    rows = max(1, _GEMM_ROW_CHUNK_ELEMENTS // in_features)
    weights = torch.empty(min(rows, out_features), in_features, dtype=torch.float32)  # [rows, in]
    for start in range(0, out_features, rows):
        stop = min(start + rows, out_features)
        chunk = weights[: stop - start]
        library.spectra_ternary_unpack(
            packed.data_ptr(),
            packed.shape[1] * 4,
            in_features,
            start,
            stop,
            chunk.data_ptr(),
            torch.get_num_threads(),
        )
        if stop - start == out_features:
            torch.mm(x, chunk.t(), out=y[:, start:stop])
        else:
            y[:, start:stop].copy_(x @ chunk.t())
    return y.mul_(row_scale)


def _cpu_matmul(
    x: torch.Tensor, packed: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor | None
) -> torch.Tensor:
    library = cpu_kernel()
    if library is None:
        raise RuntimeError(
            f"the 2-bit ternary CPU kernel is {cpu_kernel_status()}: use ternary_inference='int4' or 'auto'"
        )
    out_features, in_features = packed.shape[0], x.shape[-1]
    flat = x.reshape(-1, in_features)
    if flat.shape[0] >= GEMM_MIN_TOKENS:
        return _cpu_unpacked_gemm(library, flat, packed, row_scale, col_scale).to(x.dtype).reshape(
            *x.shape[:-1], out_features
        )
    compute = flat if flat.dtype in (torch.float32, torch.bfloat16) else flat.float()
    if compute.stride(-1) != 1:
        compute = compute.contiguous()
    y = torch.empty(compute.shape[0], out_features, dtype=compute.dtype)
    library.spectra_ternary_mm(
        compute.data_ptr(), int(compute.dtype == torch.bfloat16), compute.stride(0),
        None if col_scale is None else col_scale.data_ptr(), compute.shape[0], in_features,
        packed.data_ptr(), out_features, packed.shape[1] * 4, row_scale.data_ptr(),
        y.data_ptr(), int(y.dtype == torch.bfloat16), torch.get_num_threads(),
    )
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


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
        lanes = tl.arange(0, 8)
        planes = tl.arange(0, 16)
        # column j = 8 p + l of a block, as a [16, 8] -> [128] index
        columns = tl.reshape(planes[:, None] * 8 + lanes[None, :], (128,))
        shifts = tl.reshape(tl.broadcast_to(30 - 2 * planes[:, None], (16, 8)), (128,))
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # (tl.zeros is a jit function: not interpretable late)
        for block in range(0, KP // 128):
            # word l of every row's block: [BLOCK_N, 8] int32, broadcast over planes -> [BLOCK_N, 128]
            word_index = tl.reshape(tl.broadcast_to(lanes[None, :], (16, 8)), (128,))
            words = tl.load(
                w_ptr + rows[:, None] * (KP // 16) + block * 8 + word_index[None, :], mask=rows[:, None] < N, other=0
            )
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
        flat, packed.view(torch.int32), row_scale, col_scale if col_scale is not None else row_scale, y,
        tokens, out_features, in_features, packed.shape[1] * 4, flat.stride(0), y.stride(0),
        HAS_COL_SCALE=col_scale is not None, BLOCK_M=block_m, BLOCK_N=block_n,
    )
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


def ternary_matmul_2bit(
    x: torch.Tensor, packed: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Y = (X * col_scale) T^T * row_scale: x [..., in] (any float dtype), packed uint8 [out, padded_in / 4]
    (`pack_2bit`), row_scale float32 [out], col_scale float32 [in] or None -> [..., out] in x's dtype.

    The Triton kernel on CUDA (or anywhere with TRITON_INTERPRET=1 and a CPU tensor), the C++ kernel on CPU.
    """
    if x.device.type == "cuda" or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return _triton_matmul(x, packed, row_scale, col_scale)
    if x.device.type == "cpu":
        return _cpu_matmul(x, packed, row_scale, col_scale)
    raise RuntimeError(f"the 2-bit ternary path has no kernel for {x.device.type}: use ternary_inference='dense'")
