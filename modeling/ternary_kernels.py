"""2-bit resident ternary weights and the kernels that read them directly (the "2bit" inference path).

Layout (`pack_2bit`, uint8 [out, in_padded / 4], in_padded = in rounded up to a multiple of 128): each row is a run
of 32-byte blocks of 128 weights. Inside block b, the 16-bit little-endian lane l (l = 0..15, bytes 2l and 2l + 1 of
the block) holds in its bits 2p..2p+1 (p = 0..7) the weight j = 128 b + 16 p + l as a two's-complement 2-bit code
(0 -> 00, +1 -> 01, -1 -> 11); padding columns are 0. Shifting lane l left by 14 - 2p and arithmetically right by 14
yields t_j as int16 for the sixteen lanes at once, so one AVX2 register of a block gives 8 vectors of 16 weights in
at most 2 shifts each, with no table and no correction term; the 16 weights of plane p are the contiguous columns
16 p .. 16 p + 15 of the block. This is a resident form only: checkpoints keep the 1.6-bit format of `packing.py`.

Kernels (`ternary_matmul_2bit`):
- CPU: a small C++ file compiled with the system's C++ compiler at first use into a cache directory and loaded with
  ctypes (AVX2 + FMA + F16C, OpenMP over output rows). Activations are quantized per 128-column block to int16
  (error at most 2^-16 of the block's largest magnitude per element: below bf16's and fp16's own rounding) and
  multiplied with the int16 weights by `madd` (16 weights per instruction, exact int32 block sums); fp32
  activations take a second int16 pass over the residual of the first, which keeps them fp32-exact. A GEMV for
  decode and a 4-row register tile for more tokens; fp32 activations from GEMM_MIN_TOKENS tokens on unpack T to
  fp32 in row chunks for torch's GEMM instead (bf16 / fp16 never do: the tile stays faster).
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


# ----------------------------------------------------------------------------------------------------------------- CPU

_CPU_SOURCE = r"""
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { F32 = 0, BF16 = 1, F16 = 2 };  /* element kinds of x and y */
enum { TILE_ROWS = 4 };              /* quantized rows per register tile */

static inline float bf16_to_f32(uint16_t v) { uint32_t u = (uint32_t)v << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                              /* round to nearest even */
    return (uint16_t)(u >> 16);
}
static inline float load_value(const void* x, int kind, int64_t index) {
    if (kind == BF16) return bf16_to_f32(((const uint16_t*)x)[index]);
    if (kind == F16) return _cvtsh_ss(((const uint16_t*)x)[index]);
    return ((const float*)x)[index];
}
static inline void store_value(void* y, int kind, int64_t index, float value) {
    if (kind == BF16) ((uint16_t*)y)[index] = f32_to_bf16(value);
    else if (kind == F16) ((uint16_t*)y)[index] = _cvtss_sh(value, _MM_FROUND_TO_NEAREST_INT);
    else ((float*)y)[index] = value;
}
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s); s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}
/* the 16 weights of plane p of a block as int16 in {-1, 0, +1} (plane 7 needs no left shift) */
#define PLANE(v, p) \
    ((p) == 7 ? _mm256_srai_epi16((v), 14) : _mm256_srai_epi16(_mm256_slli_epi16((v), 14 - 2 * (p)), 14))

/* Columns [c0, c0 + 128) of one activation row (x + offset is column c0) as fp32, times col_scale, zero past k. */
static inline void load_block(const void* x, int kind, int64_t offset, const float* col_scale, int64_t c0, int64_t k,
                              float* values) {
    if (c0 + BLOCK_W <= k) {
        for (int j = 0; j < BLOCK_W; j += 8) {
            __m256 v;
            if (kind == BF16)
                v = _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)x + offset + j))), 16));
            else if (kind == F16)
                v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)x + offset + j)));
            else v = _mm256_loadu_ps((const float*)x + offset + j);
            if (col_scale) v = _mm256_mul_ps(v, _mm256_loadu_ps(col_scale + c0 + j));
            _mm256_storeu_ps(values + j, v);
        }
        return;
    }
    for (int j = 0; j < BLOCK_W; j++) {
        const float value = c0 + j < k ? load_value(x, kind, offset + j) : 0.0f;
        values[j] = col_scale && c0 + j < k ? value * col_scale[c0 + j] : value;
    }
}

/* One block of 128 fp32 `values` -> int16 codes q and the block's scale s with values ~= s * q, |q| <= 32767
   (s = block max / 32767: rounding error <= s / 2 per element). A NaN or infinity makes s NaN, so that the
   outputs it reaches are NaN rather than silently finite. */
static inline float quantize_block(const float* values, int16_t* q) {
    const __m256 magnitude_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 infinity = _mm256_set1_ps(INFINITY);
    __m256 top = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int j = 0; j < BLOCK_W; j += 8) {
        const __m256 magnitude = _mm256_and_ps(_mm256_loadu_ps(values + j), magnitude_mask);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(magnitude, infinity, _CMP_NLT_UQ));  /* NaN or >= inf */
        top = _mm256_max_ps(top, magnitude);
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    const float largest = _mm_cvtss_f32(m);
    const __m256 inverse = _mm256_set1_ps(largest > 0.0f && !_mm256_movemask_ps(bad) ? 32767.0f / largest : 0.0f);
    for (int j = 0; j < BLOCK_W; j += 16) {  /* round to nearest even, then pack 2 x 8 int32 -> 16 int16 in order */
        const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(values + j), inverse));
        const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(values + j + 8), inverse));
        _mm256_storeu_si256((__m256i*)(q + j), _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8));
    }
    return _mm256_movemask_ps(bad) ? NAN : largest / 32767.0f;
}

/* Rows of x (fp32 / bf16 / fp16, [m, k], row stride x_stride, times col_scale) -> int16 codes q [m * passes, kp] and
   block scales s [m * passes, kp / 128]: row i * passes holds x's blocks, row i * passes + 1 (fp32: passes = 2) the
   blocks of what the first pass left over. Columns k..kp are 0. */
static void quantize_activations(const void* x, int x_kind, int64_t x_stride, const float* col_scale, int64_t m,
                                 int64_t k, int64_t kp, int passes, int threads, int16_t* q, float* s) {
    const int64_t nblocks = kp / BLOCK_W;
    #pragma omp parallel for num_threads(threads) schedule(static) if (m * k > 65536)
    for (int64_t i = 0; i < m; i++) {
        float values[BLOCK_W];
        for (int64_t b = 0; b < nblocks; b++) {
            load_block(x, x_kind, i * x_stride + BLOCK_W * b, col_scale, BLOCK_W * b, k, values);
            int16_t* first = q + (i * passes) * kp + BLOCK_W * b;
            const float scale = s[(i * passes) * nblocks + b] = quantize_block(values, first);
            if (passes == 2) {
                for (int j = 0; j < BLOCK_W; j++) values[j] -= scale * (float)first[j];
                s[(i * passes + 1) * nblocks + b] = quantize_block(values, q + (i * passes + 1) * kp + BLOCK_W * b);
            }
        }
    }
}

/* One int8 weight row (k a multiple of 16) against one quantized activation row: sum_j w_j x_j */
static inline float int8_row_dot(const int8_t* w, const int16_t* q, const float* s, int64_t k) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c0 = 0; c0 < k; c0 += BLOCK_W) {
        const int64_t width = k - c0 < BLOCK_W ? k - c0 : BLOCK_W;
        __m256i sums = _mm256_setzero_si256();
        for (int64_t c = 0; c < width; c += 16) {
            const __m256i weights = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + c0 + c)));
            sums = _mm256_add_epi32(sums, _mm256_madd_epi16(weights, _mm256_loadu_si256((const __m256i*)(q + c0 + c))));
        }
        /* |block sum| <= 128 * 127 * 32767 < 2^31; above 2^24 its float conversion rounds like any fp32 sum */
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_broadcast_ss(s + c0 / BLOCK_W), acc);
    }
    return hsum(acc);
}

/* MT quantized rows (int16 [MT][kp], block scales [MT][nblocks]) against one weight row; out[i] = sum_j t_j x_i[j] */
template <int MT>
static inline void row_dot(const uint8_t* w, const int16_t* q, const float* s, int64_t kp, int64_t nblocks,
                           float* out) {
    __m256 acc[MT];
    for (int i = 0; i < MT; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblocks; b++) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(w + 32 * b));
        __m256i sums[MT][2];
        for (int i = 0; i < MT; i++) { sums[i][0] = _mm256_setzero_si256(); sums[i][1] = _mm256_setzero_si256(); }
#define STEP(p) { const __m256i t = PLANE(v, p); \
        for (int i = 0; i < MT; i++) { \
            const __m256i x = _mm256_loadu_si256((const __m256i*)(q + i * kp + BLOCK_W * b + 16 * (p))); \
            sums[i][(p) & 1] = _mm256_add_epi32(sums[i][(p) & 1], _mm256_madd_epi16(t, x)); } }
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
#undef STEP
        /* |block sum| <= 128 * 32767 < 2^24: converts to float exactly */
        for (int i = 0; i < MT; i++)
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(sums[i][0], sums[i][1])),
                                     _mm256_broadcast_ss(s + i * nblocks + b), acc[i]);
    }
    for (int i = 0; i < MT; i++) out[i] = hsum(acc[i]);
}

extern "C" {

/* y[i, r] = row_scale[r] * sum_j t[r, j] * x[i, j] * (col_scale ? col_scale[j] : 1)
   x: [m, k] of kind x_kind (F32 / BF16 / F16), row stride x_stride; w: [n, kp / 4] in the 2-bit layout;
   y: [m, n] contiguous, of kind y_kind. Activations are quantized per 128-column block to int16 (error <= 2^-16
   of the block's largest magnitude per element, below bf16's and fp16's own rounding); fp32 activations take a
   second int16 pass over the first one's residual (error ~2^-31 of the block maximum), so fp32 stays fp32-exact. */
void spectra_ternary_mm(const void* x, int x_kind, int64_t x_stride, const float* col_scale, int64_t m, int64_t k,
                        const uint8_t* w, int64_t n, int64_t kp, const float* row_scale,
                        void* y, int y_kind, int threads) {
    const int passes = x_kind == F32 ? 2 : 1;
    const int64_t nblocks = kp / BLOCK_W, rows_q = m * passes;  /* quantized row i * passes + pass */
    int16_t* q = (int16_t*)aligned_alloc(64, (size_t)((rows_q * kp * 2 + 63) / 64 * 64));
    float* s = (float*)malloc(sizeof(float) * (size_t)(rows_q * nblocks));
    quantize_activations(x, x_kind, x_stride, col_scale, m, k, kp, passes, threads, q, s);
    const int64_t row_chunk = 16, token_chunk = 16;
    const int64_t row_tasks = (n + row_chunk - 1) / row_chunk;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t task = 0; task < row_tasks; task++) {
        const int64_t r0 = task * row_chunk, r1 = r0 + row_chunk < n ? r0 + row_chunk : n;
        float dots[2 * 16];
        for (int64_t m0 = 0; m0 < m; m0 += token_chunk) {
            const int64_t m1 = m0 + token_chunk < m ? m0 + token_chunk : m;
            const int64_t q0 = m0 * passes, q1 = m1 * passes;
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t* wr = w + r * (kp / 4);
                int64_t i = q0;
                for (; i + TILE_ROWS <= q1; i += TILE_ROWS)
                    row_dot<TILE_ROWS>(wr, q + i * kp, s + i * nblocks, kp, nblocks, dots + (i - q0));
                for (; i + 2 <= q1; i += 2) row_dot<2>(wr, q + i * kp, s + i * nblocks, kp, nblocks, dots + (i - q0));
                for (; i < q1; i++) row_dot<1>(wr, q + i * kp, s + i * nblocks, kp, nblocks, dots + (i - q0));
                for (int64_t token = m0; token < m1; token++) {
                    const float* d = dots + (token - m0) * passes;
                    store_value(y, y_kind, token * n + r, (passes == 2 ? d[0] + d[1] : d[0]) * row_scale[r]);
                }
            }
        }
    }
    free(s);
    free(q);
}

/* y[i, r] = row_scale[r] * sum_j w[r, j] * x[i, j] for int8 weights w [n, k] (k a multiple of 16), activations as in
   spectra_ternary_mm (int16 per 128-column block, two passes for fp32): the int8 embedding / LM head's product. */
void spectra_int8_mm(const void* x, int x_kind, int64_t x_stride, int64_t m, int64_t k, const int8_t* w, int64_t n,
                     const float* row_scale, void* y, int y_kind, int threads) {
    const int passes = x_kind == F32 ? 2 : 1;
    const int64_t kp = (k + BLOCK_W - 1) / BLOCK_W * BLOCK_W, nblocks = kp / BLOCK_W, rows_q = m * passes;
    int16_t* q = (int16_t*)aligned_alloc(64, (size_t)((rows_q * kp * 2 + 63) / 64 * 64));
    float* s = (float*)malloc(sizeof(float) * (size_t)(rows_q * nblocks));
    quantize_activations(x, x_kind, x_stride, nullptr, m, k, kp, passes, threads, q, s);
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < n; r++) {  /* a row's k bytes stay in L1 across the tokens */
        for (int64_t i = 0; i < m; i++) {
            float dot = 0.0f;
            for (int pass = 0; pass < passes; pass++)
                dot += int8_row_dot(w + r * k, q + (i * passes + pass) * kp, s + (i * passes + pass) * nblocks, k);
            store_value(y, y_kind, i * n + r, dot * row_scale[r]);
        }
    }
    free(s);
    free(q);
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
#define STEP(p) { const __m256i t = PLANE(v, p); \
            _mm256_storeu_ps(target + 16 * (p), _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(t)))); \
            _mm256_storeu_ps(target + 16 * (p) + 8, \
                             _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(t, 1)))); }
            STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
#undef STEP
            if (target == tail) memcpy(dst + b * BLOCK_W, tail, sizeof(float) * (size_t)(k - b * BLOCK_W));
        }
    }
}

}
""".replace("BLOCK_W", str(BLOCK))

_CPU_FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
_cpu_kernels: dict[tuple[str, str], tuple[ctypes.CDLL | None, str]] = {}  # (compiler, cache dir) -> (kernel, status)
# The first kernel that loaded: what forwards use, without resolving the environment's compiler and cache directory
# on every call (a layer is only prepared for "2bit" once `cpu_kernel()` has returned a kernel).
_forward_kernel: ctypes.CDLL | None = None


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
    global _forward_kernel
    if os.environ.get(KERNEL_ENV, "1") == "0":
        return None
    key = _kernel_key(compiler, cache_dir)
    if key not in _cpu_kernels:
        _cpu_kernels[key] = _load_cpu_kernel(*key)
        _forward_kernel = _forward_kernel or _cpu_kernels[key][0]
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
            library.spectra_int8_mm.restype = None
            library.spectra_int8_mm.argtypes = [
                ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
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


_ELEMENT_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # the C++ file's F32 / BF16 / F16

# From this many fp32 tokens on (prefill), unpacking T to fp32 in row chunks and multiplying with torch's fp32 GEMM
# beats the register tile's two int16 passes. Measured at 5120 x 1792, 2 threads, idle: fp32 32 tokens 7.8 ms tile vs
# 9.1 ms GEMM, 64 tokens 16.9 vs 11.7. bf16 / fp16 take one pass and the tile wins at every width tried (128 tokens
# 16.5 vs 19.4 ms, 256 tokens 33.4 vs 35.7 ms: the unpack costs ~6 ms and the GEMM's slope is the tile's).
GEMM_MIN_TOKENS = 48
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


def _kernel_operands(
    flat: torch.Tensor, leading: torch.Size, out_features: int
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """What the C++ entry points take: the activations [tokens, in] as fp32 / bf16 / fp16 with unit column stride,
    their element kind, and an empty output [*leading, out_features] of that dtype."""
    kind = _ELEMENT_KINDS.get(flat.dtype)
    if kind is None:
        flat, kind = flat.float(), 0
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    return flat, kind, torch.empty((*leading, out_features), dtype=flat.dtype)


def _cpu_matmul(
    x: torch.Tensor, packed: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor | None
) -> torch.Tensor:
    library = _forward_kernel or cpu_kernel()
    if library is None:
        raise RuntimeError(
            f"the 2-bit ternary CPU kernel is {cpu_kernel_status()}: use ternary_inference='int4' or 'auto'"
        )
    # (a decode step runs this 7 times per layer: every tensor attribute read here costs about a microsecond)
    in_features, out_features = x.shape[-1], packed.shape[0]
    flat = x.reshape(-1, in_features)
    if flat.shape[0] >= GEMM_MIN_TOKENS and flat.dtype not in (torch.bfloat16, torch.float16):
        y = _cpu_unpacked_gemm(library, flat, packed, row_scale, col_scale)
        return y.to(x.dtype).reshape(*x.shape[:-1], out_features)
    flat, kind, y = _kernel_operands(flat, x.shape[:-1], out_features)
    library.spectra_ternary_mm(
        flat.data_ptr(), kind, flat.stride(0), None if col_scale is None else col_scale.data_ptr(), flat.shape[0],
        in_features, packed.data_ptr(), out_features, packed.shape[1] * 4, row_scale.data_ptr(), y.data_ptr(), kind,
        torch.get_num_threads(),
    )
    return y if y.dtype == x.dtype else y.to(x.dtype)


def int8_matmul_cpu(x: torch.Tensor, weight: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor | None:
    """Y = X W^T * row_scale for int8 W [out, in] (in a multiple of 16) and float32 row_scale [out] on CPU, by the
    C++ kernel (activations as in the 2-bit path: int16 per block, fp32 in two passes); x [..., in] -> [..., out] in
    x's dtype. None where the kernel cannot take it (no kernel, another device, in not a multiple of 16)."""
    in_features, out_features = weight.shape[1], weight.shape[0]
    if x.device.type != "cpu" or in_features % 16:
        return None
    library = _forward_kernel or cpu_kernel()
    if library is None:
        return None
    flat, kind, y = _kernel_operands(x.reshape(-1, in_features), x.shape[:-1], out_features)
    library.spectra_int8_mm(
        flat.data_ptr(), kind, flat.stride(0), flat.shape[0], in_features, weight.data_ptr(), out_features,
        row_scale.data_ptr(), y.data_ptr(), kind, torch.get_num_threads(),
    )
    return y if y.dtype == x.dtype else y.to(x.dtype)


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


# ---------------------------------------------------------------------------------------------------- torch.compile

COMPILED_OP_NAME = "spectra_hf::ternary_matmul_2bit"


def _register_compiled_op():
    """`ternary_matmul_2bit` as a torch custom op, which torch.compile keeps whole in its graph (a ctypes call would
    break the graph at every layer). Eager forwards call the function directly: the dispatcher would cost ~10 us a
    call. Registered once per process, by whichever copy of this file (package or remote code) is imported first."""
    namespace, name = COMPILED_OP_NAME.split("::")
    if hasattr(getattr(torch.ops, namespace), name):
        return getattr(getattr(torch.ops, namespace), name).default

    @torch.library.custom_op(COMPILED_OP_NAME, mutates_args=())
    def compiled_op(
        x: torch.Tensor, packed: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor | None
    ) -> torch.Tensor:
        return ternary_matmul_2bit(x, packed, row_scale, col_scale)

    @compiled_op.register_fake
    def _(x, packed, row_scale, col_scale):
        return x.new_empty((*x.shape[:-1], packed.shape[0]))

    return compiled_op


ternary_matmul_2bit_op = _register_compiled_op()
