"""The C++ source of the CPU 2-bit kernel, a torch operator library (see `ternary_kernels.py`, which builds and loads
it). One source, compiled once per instruction-set variant: the variant's flags select the code paths below
(`__AVX512BW__`: 512-bit row products, `__AVX512VNNI__` / `__AVXVNNI__`: `vpdpwssd` instead of `vpmaddwd` + add,
`__AVX512BF16__`: bf16 prefill by `vdpbf16ps`,
`__AVX2__`: the 256-bit code, none of them: portable C++ that the compiler vectorizes for the target it is given).

The operators, registered under the namespace NAMESPACE (one per variant, so that variants can be loaded side by
side for tests):
  ternary_mm(Tensor x, Tensor packed, Tensor row_scale, Tensor? col_scale, int activation_bits) -> Tensor
  ternary_mm_fused(Tensor x, Tensor packed, Tensor row_scale, int[] outs, int activation_bits) -> Tensor[]
      (one product with the stacked rows of several layers, returned as one output per layer of `outs` rows)
      (activation_bits has no default: Inductor's C++ wrapper drops arguments equal to a schema default and then
      calls the dispatcher with too few)
      activation_bits 16: the exact route (int16 blocks, fp32 in two passes; fp32 prefill through torch's GEMM;
      with `__AVX512BF16__`, bf16 activations of BF16_GEMM_MIN_TOKENS or more multiplied unquantized by `vdpbf16ps`,
      as are those of the int8 route from BF16_GEMM_MIN_TOKENS_INT8 tokens on);
      activation_bits 8: the opt-in int8 route (llama.cpp's): every call quantizes the activations to int8 per
      128-column block (scale = block max / 127) and multiplies them with `maddubs` / `vpdpbusd`.
  int8_mm(Tensor x, Tensor weight, Tensor row_scale) -> Tensor
  dense_mm(Tensor x, Tensor weight) -> Tensor
      (x W^T for a few tokens with W fp32 / bf16 / fp16 of x's dtype, fp32 accumulation: the LM head of a decode step)
  attention_inputs(Tensor hidden, Tensor norm_weight, float eps, Tensor packed, Tensor row_scale, int[] outs,
                   Tensor cos, Tensor sin, int head_dim, int activation_bits) -> Tensor[]
  attention_output_and_mlp(Tensor attention, Tensor residual, Tensor o_packed, Tensor o_row_scale, Tensor? o_col_scale,
                           Tensor norm_weight, float eps, Tensor gate_up_packed, Tensor gate_up_row_scale,
                           int[] gate_up_outs, Tensor down_packed, Tensor down_row_scale, Tensor? down_col_scale,
                           int activation_bits) -> Tensor
      (a Llama decoder block in two calls around the attention itself, which stays in Python with the KV cache:
      RMSNorm, the q/k/v product and the rotary embedding; then o_proj, the residual, RMSNorm, gate/up, SiLU * up,
      down and the residual. Every step rounds to the hidden states' dtype where transformers' eager block rounds:
      a block computes what the per-module forward computes, up to the order of fp32 reductions, in 2 operator calls
      instead of ~60 torch ops)
  decode_attention(Tensor query, Tensor key, Tensor value, Tensor? mask, float scaling) -> Tensor
      (one new token per sequence attending to the cached keys its boolean mask shows: a decode step's attention in
      one call, fp32 softmax and sums, instead of transformers' sdpa wrapper and the ~60 us it costs per layer)
  decode_layers(Tensor hidden, Tensor?[] blocks, Tensor(a!)[] keys, Tensor(b!)[] values, Tensor cos, Tensor sin,
                Tensor? mask, float[] eps, int[] qkv_outs, int[] gate_up_outs, int head_dim, float scaling,
                int activation_bits) -> Tensor
      (a decode step through every two-call block of a model in one call: per layer attention_inputs, the new key
      and value written into the last token slot of the caller's cache tensors, decode_attention and
      attention_output_and_mlp, with no Python between the layers)
  ternary_unpack(Tensor packed, int in_features) -> Tensor
  set_allocation_limit(int bytes) -> ()
      (testing hook: scratch allocations above `bytes` fail as an out-of-memory would; -1 lifts the limit)
  parallel_threads() -> int
      (testing hook: the threads one parallel region of this library runs, torch's intra-op setting if it was built
      with OpenMP as torch was)
Scratch for the quantized activations lives in per-thread buffers that are kept between calls (no allocation per
decode step) up to KEEP_BYTES; every allocation is checked and a failure raises a RuntimeError, never a crash.
"""

CPU_SOURCE = r"""
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  /* per-operator headers only: the whole ATen.h triples the build time */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define BLOCK_W 128        /* weights per 32-byte block of a row */
#define TILE_ROWS 4        /* quantized activation rows per register tile */
#define GEMM_MIN_TOKENS 48 /* fp32 inputs from this many tokens on: unpack T and use torch's fp32 GEMM */
#define GEMM_MIN_TOKENS_16BIT 192 /* the same for bf16 / fp16 inputs (one int16 pass: the tile wins longer) */
#define BF16_GEMM_MIN_TOKENS 4 /* AVX-512 BF16: bf16 inputs from this many tokens on take bf16_product */
#define BF16_GEMM_MIN_TOKENS_INT8 16 /* the same where int8 activations were asked for (their tile wins below) */
#define BF16_MAX_SEGMENTS 64   /* col_scale runs bf16_product takes (more: the fp32 GEMM) */

enum { F32 = 0, BF16 = 1, F16 = 2 };

/* ------------------------------------------------------------------------------------------------- checked scratch */

static std::atomic<int64_t> allocation_limit{-1};
static const size_t KEEP_BYTES = (size_t)4 << 20;  /* per-thread scratch kept between calls */

struct Scratch {
    void* data = nullptr;
    size_t capacity = 0;
    ~Scratch() { std::free(data); }
};
static thread_local Scratch thread_scratch;

/* A 64-byte aligned buffer of `bytes` for this call: the calling thread's kept buffer when it fits, else a fresh
   allocation that `release_scratch` frees. Raises (TORCH_CHECK) on failure, before any parallel region starts. */
static void* acquire_scratch(size_t bytes, bool* owned) {
    bytes = (bytes + 63) / 64 * 64;
    const int64_t limit = allocation_limit.load();
    if (bytes <= thread_scratch.capacity && (limit < 0 || (int64_t)bytes <= limit)) {
        *owned = false;
        return thread_scratch.data;
    }
    void* data = (limit >= 0 && (int64_t)bytes > limit) ? nullptr : std::aligned_alloc(64, bytes);
    TORCH_CHECK(data != nullptr, "spectra ternary kernel: out of memory allocating ", bytes,
                " bytes of scratch for the quantized activations (use fewer tokens per call)");
    if (bytes <= KEEP_BYTES) {
        std::free(thread_scratch.data);
        thread_scratch.data = data;
        thread_scratch.capacity = bytes;
        *owned = false;
    } else {
        *owned = true;
    }
    return data;
}
struct ScratchGuard {
    void* data; bool owned;
    explicit ScratchGuard(size_t bytes) { data = acquire_scratch(bytes, &owned); }
    ~ScratchGuard() { if (owned) std::free(data); }
};

/* --------------------------------------------------------------------------------------------- element conversions */

static inline float load_value(const void* x, int kind, int64_t index) {
    if (kind == BF16) return (float)((const c10::BFloat16*)x)[index];
    if (kind == F16) return (float)((const c10::Half*)x)[index];
    return ((const float*)x)[index];
}
static inline void store_value(void* y, int kind, int64_t index, float value) {
    if (kind == BF16) ((c10::BFloat16*)y)[index] = c10::BFloat16(value);  /* round to nearest even, NaN kept */
    else if (kind == F16) ((c10::Half*)y)[index] = c10::Half(value);
    else ((float*)y)[index] = value;
}

/* Columns [c0, c0 + 128) of one activation row (x + offset is column c0) as fp32, times col_scale, zero past k. */
#if defined(__AVX2__)
/* elements index .. index + 7 of x (fp32 / bf16 / fp16) as fp32 */
static inline __m256 load8(const void* x, int kind, int64_t index) {
    if (kind == BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)x + index))), 16));
    if (kind == F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)x + index)));
    return _mm256_loadu_ps((const float*)x + index);
}
#endif

static inline void load_block(const void* x, int kind, int64_t offset, const float* col_scale, int64_t c0, int64_t k,
                              float* values) {
#if defined(__AVX2__)
    if (c0 + BLOCK_W <= k) {
        for (int j = 0; j < BLOCK_W; j += 8) {
            __m256 v = load8(x, kind, offset + j);
            if (col_scale) v = _mm256_mul_ps(v, _mm256_loadu_ps(col_scale + c0 + j));
            _mm256_storeu_ps(values + j, v);
        }
        return;
    }
#endif
    for (int j = 0; j < BLOCK_W; j++) {
        const float value = c0 + j < k ? load_value(x, kind, offset + j) : 0.0f;
        values[j] = col_scale && c0 + j < k ? value * col_scale[c0 + j] : value;
    }
}

/* The largest magnitude of a block of 128 fp32 values; *bad set where one is NaN or infinite */
static inline float block_max(const float* values, bool* bad) {
    float largest = 0.0f;
    bool seen = false;
    for (int j = 0; j < BLOCK_W; j++) {
        const float magnitude = std::fabs(values[j]);
        seen |= !(magnitude < INFINITY);  /* NaN or infinite */
        largest = magnitude > largest ? magnitude : largest;
    }
    *bad = seen;
    return largest;
}

/* One block of 128 fp32 `values` -> int16 codes q and the block's scale s with values ~= s * q, |q| <= max_code
   (s = block max / max_code: rounding error <= s / 2 per element). A NaN or infinity makes s NaN, so that the
   outputs it reaches are NaN rather than silently finite. */
static inline float quantize_block(const float* values, int16_t* q, float max_code = 32767.0f) {
    bool bad = false;
    const float largest = block_max(values, &bad);
    const float inverse = largest > 0.0f && !bad ? max_code / largest : 0.0f;
    for (int j = 0; j < BLOCK_W; j++) q[j] = (int16_t)std::nearbyint(values[j] * inverse);  /* to nearest even */
    return bad ? NAN : largest / max_code;
}

/* Rows of x (fp32 / bf16 / fp16, [m, k], row stride x_stride, times col_scale) -> int16 codes q [m * passes, kp] and
   block scales s [m * passes, kp / 128]: row i * passes holds x's blocks, row i * passes + 1 (fp32: passes = 2) the
   blocks of what the first pass left over. Columns k..kp are 0. */
static void quantize_activations(const void* x, int x_kind, int64_t x_stride, const float* col_scale, int64_t m,
                                 int64_t k, int64_t kp, int passes, int16_t* q, float* s) {
    const int64_t nblocks = kp / BLOCK_W;
    at::parallel_for(0, m, m * k > 65536 ? 1 : m, [&](int64_t begin, int64_t end) {
        float values[BLOCK_W];
        for (int64_t i = begin; i < end; i++) {
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
    });
}

/* ------------------------------------------------------------------------------------------------- row products */

#if defined(__AVX2__)
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s); s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}
/* The four-row decode GEMVs stream a model's weights from memory, two rows' worth of bytes per pass and thread: a
   software prefetch into L2, once per 64-byte line (b even), PREFETCH_ROWS rows and at least PREFETCH_BYTES ahead,
   keeps more loads in flight than the hardware prefetcher does. Measured on decoder blocks cycled from memory (AMD
   EPYC, AVX-512, 2 threads, GB/s of weights on the exact / int8 route at 3.9B shapes): into L1 (_MM_HINT_T0) 4, 8,
   16 or 32 rows ahead 16.5-19.1, into L2 8 rows ahead 26.7 / 31.0, and at least 4 KiB ahead 28.2 / 33.8 (390M
   shapes: 17.3 / 19.7 -> 18.7 / 23.9; 2, 8 and 16 KiB alike or worse); no prefetch 13.9 / 15.2; non-temporal
   19.8 / 20.0. */
#define PREFETCH_ROWS 8
#define PREFETCH_BYTES 4096
#define PREFETCH_AHEAD(address, row_bytes, b) \
    do { \
        if (((b) & 1) == 0) \
            _mm_prefetch((const char*)(address) + std::max<int64_t>(PREFETCH_ROWS * (row_bytes), PREFETCH_BYTES), \
                         _MM_HINT_T1); \
    } while (0)
/* out[r] = the sum of acc[r]'s lanes, r = 0..3: lanes of hadd(hadd(a, b), hadd(c, d)) hold a, b, c, d partial sums in
   each 128-bit half */
static inline void hsum4(const __m256* acc, float* out) {
    const __m256 sums = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1)));
}
/* acc + the pairwise int16 products of a and b summed into int32 lanes: one vpdpwssd where the CPU has VNNI */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define MADD_ACC(acc, a, b) _mm256_dpwssd_epi32((acc), (a), (b))
#elif defined(__AVXVNNI__)
#define MADD_ACC(acc, a, b) _mm256_dpwssd_avx_epi32((acc), (a), (b))
#else
#define MADD_ACC(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#endif
/* the 16 weights of plane p of a block as int16 in {-1, 0, +1} (plane 7 needs no left shift) */
#define PLANE(v, p) \
    ((p) == 7 ? _mm256_srai_epi16((v), 14) : _mm256_srai_epi16(_mm256_slli_epi16((v), 14 - 2 * (p)), 14))
/* The int32 lane sums of a block's 8 planes of weights (plane(v, p)) times activation vectors x[0..7], in two
   accumulation chains (even and odd planes) so that the multiply-adds overlap: the four-row GEMVs' block step, written
   once for both register widths (madd, madd_acc, plane and add: the width's intrinsics or macros) */
#define BLOCK_PLANE_SUMS(madd, madd_acc, plane, add, v, x) \
    add(madd_acc(madd_acc(madd_acc(madd(plane(v, 0), x[0]), plane(v, 2), x[2]), plane(v, 4), x[4]), \
                 plane(v, 6), x[6]), \
        madd_acc(madd_acc(madd_acc(madd(plane(v, 1), x[1]), plane(v, 3), x[3]), plane(v, 5), x[5]), \
                 plane(v, 7), x[7]))

/* blocks [b0, nblocks) of MT quantized rows against one weight row, 256 bits at a time; adds into out[i] */
template <int MT>
static inline void row_dot_256(const uint8_t* w, const int16_t* q, const float* s, int64_t kp, int64_t b0,
                               int64_t nblocks, float* out) {
    __m256 acc[MT];
    for (int i = 0; i < MT; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t b = b0; b < nblocks; b++) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(w + 32 * b));
        __m256i sums[MT][2];
        for (int i = 0; i < MT; i++) { sums[i][0] = _mm256_setzero_si256(); sums[i][1] = _mm256_setzero_si256(); }
#define STEP(p) { const __m256i t = PLANE(v, p); \
        for (int i = 0; i < MT; i++) { \
            const __m256i x = _mm256_loadu_si256((const __m256i*)(q + i * kp + BLOCK_W * b + 16 * (p))); \
            sums[i][(p) & 1] = MADD_ACC(sums[i][(p) & 1], t, x); } }
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
#undef STEP
        /* |block sum| <= 128 * 32767 < 2^24: converts to float exactly */
        for (int i = 0; i < MT; i++)
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(sums[i][0], sums[i][1])),
                                     _mm256_broadcast_ss(s + i * (kp / BLOCK_W) + b), acc[i]);
    }
    for (int i = 0; i < MT; i++) out[i] += hsum(acc[i]);
}

/* four weight rows (row_bytes apart) against one quantized activation row: out[0..3] set. A decode step's GEMV:
   the activation vectors are loaded once for the four rows, four independent accumulation chains keep the SIMD
   units busy, and one horizontal reduction serves four rows (at k = 512 the per-row tail cost as much as the
   products). */
static inline void rows4_block_256(const uint8_t* w, int64_t row_bytes, const int16_t* q, const float* s, int64_t b,
                                   __m256* acc) {
    __m256i x[8];
    for (int p = 0; p < 8; p++) x[p] = _mm256_loadu_si256((const __m256i*)(q + BLOCK_W * b + 16 * p));
    const __m256 scale = _mm256_broadcast_ss(s + b);
    for (int r = 0; r < 4; r++) {
        PREFETCH_AHEAD(w + r * row_bytes + 32 * b, row_bytes, b);
        const __m256i v = _mm256_loadu_si256((const __m256i*)(w + r * row_bytes + 32 * b));
        const __m256i sums = BLOCK_PLANE_SUMS(_mm256_madd_epi16, MADD_ACC, PLANE, _mm256_add_epi32, v, x);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[r]);
    }
}
static inline void rows4_dot_256(const uint8_t* w, int64_t row_bytes, const int16_t* q, const float* s,
                                 int64_t nblocks, float* out) {
    __m256 acc[4];
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblocks; b++) rows4_block_256(w, row_bytes, q, s, b, acc);
    hsum4(acc, out);
}
#endif

#if defined(__AVX512BW__)
#if defined(__AVX512VNNI__)
#define MADD_ACC_512(acc, a, b) _mm512_dpwssd_epi32((acc), (a), (b))
#else
#define MADD_ACC_512(acc, a, b) _mm512_add_epi32((acc), _mm512_madd_epi16((a), (b)))
#endif
#define PLANE_512(v, p) \
    ((p) == 7 ? _mm512_srai_epi16((v), 14) : _mm512_srai_epi16(_mm512_slli_epi16((v), 14 - 2 * (p)), 14))
/* Two blocks per 512-bit register (bytes 0-31: block b, 32-63: block b + 1): 32 bytes of activation codes of block b
   (at `first`: 16 int16 codes of a plane, or 32 int8 codes of a field) and the same of block b + 1 (BLOCK_W codes
   further), and the two blocks' scales s[0], s[1] lane for lane; where PAIR is false (an odd last block), block
   b + 1's half is zeros */
template <bool PAIR = true, typename Code>
static inline __m512i block_pair_codes(const Code* first) {
    const __m256i a = _mm256_loadu_si256((const __m256i*)first);
    if (!PAIR) return _mm512_zextsi256_si512(a);
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), _mm256_loadu_si256((const __m256i*)(first + BLOCK_W)), 1);
}
template <bool PAIR = true>
static inline __m512 block_pair_scales(const float* s) {
    if (!PAIR) return _mm512_zextps256_ps512(_mm256_set1_ps(s[0]));
    return _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(s[0]), _mm512_set1_ps(s[1]));
}
/* (an odd last block takes 256 bits) */
template <int MT>
static inline void row_dot(const uint8_t* w, const int16_t* q, const float* s, int64_t kp, int64_t nblocks,
                           float* out) {
    __m512 acc[MT];
    for (int i = 0; i < MT; i++) { acc[i] = _mm512_setzero_ps(); out[i] = 0.0f; }
    int64_t b = 0;
    for (; b + 2 <= nblocks; b += 2) {
        const __m512i v = _mm512_loadu_si512((const void*)(w + 32 * b));
        __m512i sums[MT];
        for (int i = 0; i < MT; i++) sums[i] = _mm512_setzero_si512();
#define STEP(p) { const __m512i t = PLANE_512(v, p); \
        for (int i = 0; i < MT; i++) { \
            const __m512i x = block_pair_codes(q + i * kp + BLOCK_W * b + 16 * (p)); \
            sums[i] = MADD_ACC_512(sums[i], t, x); } }
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
#undef STEP
        for (int i = 0; i < MT; i++) {
            const __m512 scales = block_pair_scales(s + i * (kp / BLOCK_W) + b);
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[i]), scales, acc[i]);
        }
    }
    for (int i = 0; i < MT; i++) out[i] = _mm512_reduce_add_ps(acc[i]);
    if (b < nblocks) row_dot_256<MT>(w, q, s, kp, b, nblocks, out);
}

/* rows4_dot_256 with two blocks per 512-bit register: a block pair's activations are combined once for the four rows
   (1.1B and 390M shapes, one token, 2 threads, interleaved, AMD EPYC with AVX-512 VNNI: 0.79-0.82x the time of
   row_dot one row at a time, 0.75-0.80x of the avx2 variant's rows4_dot_256); an odd last block takes the 256-bit
   step */
static inline void rows4_dot_512(const uint8_t* w, int64_t row_bytes, const int16_t* q, const float* s,
                                 int64_t nblocks, float* out) {
    __m512 acc[4];
    for (int r = 0; r < 4; r++) acc[r] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nblocks; b += 2) {
        __m512i x[8];
        for (int p = 0; p < 8; p++) x[p] = block_pair_codes(q + BLOCK_W * b + 16 * p);
        const __m512 scale = block_pair_scales(s + b);
        for (int r = 0; r < 4; r++) {
            PREFETCH_AHEAD(w + r * row_bytes + 32 * b, row_bytes, b);  /* (b even: one 64-byte line per pair) */
            const __m512i v = _mm512_loadu_si512((const void*)(w + r * row_bytes + 32 * b));
            const __m512i sums = BLOCK_PLANE_SUMS(_mm512_madd_epi16, MADD_ACC_512, PLANE_512, _mm512_add_epi32, v, x);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc[r]);
        }
    }
    __m256 halves[4];
    for (int r = 0; r < 4; r++)
        halves[r] = _mm256_add_ps(_mm512_castps512_ps256(acc[r]), _mm512_extractf32x8_ps(acc[r], 1));
    if (b < nblocks) rows4_block_256(w, row_bytes, q, s, b, halves);
    hsum4(halves, out);
}
#elif defined(__AVX2__)
template <int MT>
static inline void row_dot(const uint8_t* w, const int16_t* q, const float* s, int64_t kp, int64_t nblocks,
                           float* out) {
    for (int i = 0; i < MT; i++) out[i] = 0.0f;
    row_dot_256<MT>(w, q, s, kp, 0, nblocks, out);
}
#else
/* portable: the weights of a block widened to int16 once, then plain integer dot products (vectorized by the
   compiler for whatever target it is given) */
template <int MT>
static inline void row_dot(const uint8_t* w, const int16_t* q, const float* s, int64_t kp, int64_t nblocks,
                           float* out) {
    for (int i = 0; i < MT; i++) out[i] = 0.0f;
    int16_t t[BLOCK_W];
    for (int64_t b = 0; b < nblocks; b++) {
        const uint8_t* block = w + 32 * b;
        for (int l = 0; l < 16; l++) {
            const uint16_t lane = (uint16_t)(block[2 * l] | (block[2 * l + 1] << 8));
            for (int p = 0; p < 8; p++) t[16 * p + l] = (int16_t)((int16_t)(lane << (14 - 2 * p)) >> 14);
        }
        for (int i = 0; i < MT; i++) {
            const int16_t* x = q + i * kp + BLOCK_W * b;
            int32_t sum = 0;
            for (int j = 0; j < BLOCK_W; j++) sum += (int32_t)t[j] * (int32_t)x[j];
            out[i] += (float)sum * s[i * (kp / BLOCK_W) + b];
        }
    }
}
#endif

/* One int8 weight row (k a multiple of 16) against one quantized activation row: sum_j w_j x_j */
static inline float int8_row_dot(const int8_t* w, const int16_t* q, const float* s, int64_t k) {
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c0 = 0; c0 < k; c0 += BLOCK_W) {
        const int64_t width = k - c0 < BLOCK_W ? k - c0 : BLOCK_W;
        __m256i sums = _mm256_setzero_si256();
        for (int64_t c = 0; c < width; c += 16) {
            const __m256i weights = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + c0 + c)));
            sums = MADD_ACC(sums, weights, _mm256_loadu_si256((const __m256i*)(q + c0 + c)));
        }
        /* |block sum| <= 128 * 127 * 32767 < 2^31; above 2^24 its float conversion rounds like any fp32 sum */
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_broadcast_ss(s + c0 / BLOCK_W), acc);
    }
    return hsum(acc);
#else
    float total = 0.0f;
    for (int64_t c0 = 0; c0 < k; c0 += BLOCK_W) {
        const int64_t width = k - c0 < BLOCK_W ? k - c0 : BLOCK_W;
        int32_t sum = 0;
        for (int64_t c = 0; c < width; c++) sum += (int32_t)w[c0 + c] * (int32_t)q[c0 + c];
        total += (float)sum * s[c0 / BLOCK_W];
    }
    return total;
#endif
}

/* rows [r0, r1) of T as fp32 into out [r1 - r0, k] */
static void unpack_rows(const uint8_t* w, int64_t kp, int64_t k, int64_t r0, int64_t r1, float* out) {
    at::parallel_for(r0, r1, 16, [&](int64_t begin, int64_t end) {
        float block_values[BLOCK_W];
        for (int64_t r = begin; r < end; r++) {
            const uint8_t* wr = w + r * (kp / 4);
            float* dst = out + (r - r0) * k;
            for (int64_t b = 0; b < kp / BLOCK_W; b++) {
                const uint8_t* block = wr + 32 * b;
                for (int l = 0; l < 16; l++) {
                    const uint16_t lane = (uint16_t)(block[2 * l] | (block[2 * l + 1] << 8));
                    for (int p = 0; p < 8; p++)
                        block_values[16 * p + l] = (float)((int16_t)(lane << (14 - 2 * p)) >> 14);
                }
                const int64_t width = k - b * BLOCK_W < BLOCK_W ? k - b * BLOCK_W : BLOCK_W;
                std::memcpy(dst + b * BLOCK_W, block_values, sizeof(float) * (size_t)width);
            }
        }
    });
}

/* ----------------------------------------------------------------------------------- int8 activations (opt-in) */

/* Byte i (0..31) of a weight block, shifted right by 2e (e = 0..3), holds in its low two bits the code of column
   I8_COLUMN(e, i) of the block: even bytes are lane i / 2's low byte (plane e), odd bytes its high byte (plane 4 + e).
   The int8 activations of a block are stored in that order (position 32 e + i), so that one shift and mask of the
   block's 32 bytes lines its weights up with 32 consecutive activation bytes. */
#define I8_COLUMN(e, i) (((i) & 1 ? 64 : 0) + 16 * (e) + ((i) >> 1))

/* One block of 128 fp32 `values` -> int8 codes q (extraction order) with values ~= s * q, |q| <= 127, s = block
   max / 127 (rounding error <= s / 2 per element); *sum = the sum of the codes. NaN / infinity: s NaN. */
static inline float quantize_block_i8(const float* values, int8_t* q, int32_t* sum) {
    bool bad = false;
    const float largest = block_max(values, &bad);
    const float inverse = largest > 0.0f && !bad ? 127.0f / largest : 0.0f;
    int32_t total = 0;
    for (int e = 0; e < 4; e++)
        for (int i = 0; i < 32; i++) {
            const int8_t code = (int8_t)std::nearbyint(values[I8_COLUMN(e, i)] * inverse);
            q[32 * e + i] = code;
            total += code;
        }
    *sum = total;
    return bad ? NAN : largest / 127.0f;
}

/* Rows of x ([m, k], as for quantize_activations) -> int8 codes q [m, kp] in extraction order, block scales
   s [m, kp / 128] and per row the correction c [m] = sum_b s_b * (sum of block b's codes): the weights enter the
   products as t + 1 in {0, 1, 2} (unsigned, as `maddubs` / `vpdpbusd` need), so sum_j t_j x_j = sum_j (t_j + 1) x_j
   - c. */
static void quantize_activations_i8(const void* x, int x_kind, int64_t x_stride, const float* col_scale, int64_t m,
                                    int64_t k, int64_t kp, int8_t* q, float* s, float* c) {
    const int64_t nblocks = kp / BLOCK_W;
    at::parallel_for(0, m, m * k > 65536 ? 1 : m, [&](int64_t begin, int64_t end) {
        float values[BLOCK_W];
        for (int64_t i = begin; i < end; i++) {
            double correction = 0.0;
            for (int64_t b = 0; b < nblocks; b++) {
                load_block(x, x_kind, i * x_stride + BLOCK_W * b, col_scale, BLOCK_W * b, k, values);
                int32_t sum = 0;
                const float scale = s[i * nblocks + b] = quantize_block_i8(values, q + i * kp + BLOCK_W * b, &sum);
                correction += (double)scale * (double)sum;
            }
            c[i] = (float)correction;
        }
    });
}

#if defined(__AVX2__)
/* acc + the sums of four adjacent products of unsigned bytes u and signed bytes x, in int32 lanes */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define DPBUSD(acc, u, x) _mm256_dpbusd_epi32((acc), (u), (x))
#elif defined(__AVXVNNI__)
#define DPBUSD(acc, u, x) _mm256_dpbusd_avx_epi32((acc), (u), (x))
#endif

/* the 128 weights of a 32-byte block as t + 1 in {0, 1, 2}, 32 bytes per plane e in extraction order */
static inline void weights_plus_one(const uint8_t* block, __m256i* u) {
    const __m256i low2 = _mm256_set1_epi8(3);
    /* code -> t + 1: 00 (0) -> 1, 01 (+1) -> 2, 11 (-1) -> 0; 10 never occurs (1 keeps it harmless) */
    const __m256i plus_one = _mm256_setr_epi8(1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                              1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i v = _mm256_loadu_si256((const __m256i*)block);
    for (int e = 0; e < 4; e++)  /* (16-bit shifts: bits crossing into a byte's top are masked off) */
        u[e] = _mm256_shuffle_epi8(plus_one, _mm256_and_si256(_mm256_srli_epi16(v, 2 * e), low2));
}

/* sum_j (t_j + 1) x_j of one block in int32 lanes: u from weights_plus_one, x[e] the block's int8 activations */
static inline __m256i block_sums_i8(const __m256i* u, const __m256i* x) {
#if defined(DPBUSD)
    __m256i sums = _mm256_setzero_si256();
    for (int e = 0; e < 4; e++) sums = DPBUSD(sums, u[e], x[e]);
    return sums;
#else
    /* each maddubs lane <= 2 * 2 * 127 = 508, four of them <= 2032: no int16 saturation */
    __m256i pairs = _mm256_maddubs_epi16(u[0], x[0]);
    for (int e = 1; e < 4; e++) pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(u[e], x[e]));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
}

static inline void load_block_i8(const int8_t* block, __m256i* x) {
    for (int e = 0; e < 4; e++) x[e] = _mm256_loadu_si256((const __m256i*)(block + 32 * e));
}

/* sum_j (t_j + 1) q_j * s_b over the blocks of MT int8 activation rows against one weight row (out[i] set) */
template <int MT>
static inline void row_dot_i8(const uint8_t* w, const int8_t* q, const float* s, int64_t kp, int64_t nblocks,
                              float* out) {
    __m256 acc[MT];
    for (int i = 0; i < MT; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblocks; b++) {
        __m256i u[4], x[4];
        weights_plus_one(w + 32 * b, u);
        for (int i = 0; i < MT; i++) {
            load_block_i8(q + i * kp + BLOCK_W * b, x);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_sums_i8(u, x)),
                                     _mm256_broadcast_ss(s + i * (kp / BLOCK_W) + b), acc[i]);
        }
    }
    for (int i = 0; i < MT; i++) out[i] = hsum(acc[i]);
}

/* four weight rows (row_bytes apart) against one int8 activation row: out[0..3] = sum_j (t_j + 1) q_j * s_b. A
   decode step's GEMV on the int8 route, as rows4_dot_256 on the exact one (activations loaded once for four rows, one
   horizontal reduction for the four) */
static inline void rows4_dot_i8(const uint8_t* w, int64_t row_bytes, const int8_t* q, const float* s,
                                int64_t nblocks, float* out) {
    __m256 acc[4];
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblocks; b++) {
        __m256i x[4];
        load_block_i8(q + BLOCK_W * b, x);
        const __m256 scale = _mm256_broadcast_ss(s + b);
        for (int r = 0; r < 4; r++) {
            __m256i u[4];
            PREFETCH_AHEAD(w + r * row_bytes + 32 * b, row_bytes, b);
            weights_plus_one(w + r * row_bytes + 32 * b, u);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_sums_i8(u, x)), scale, acc[r]);
        }
    }
    hsum4(acc, out);
}
#else
template <int MT>
static inline void row_dot_i8(const uint8_t* w, const int8_t* q, const float* s, int64_t kp, int64_t nblocks,
                              float* out) {
    static const int8_t plus_one[4] = {1, 2, 1, 0};
    for (int i = 0; i < MT; i++) out[i] = 0.0f;
    int8_t u[BLOCK_W];
    for (int64_t b = 0; b < nblocks; b++) {
        const uint8_t* block = w + 32 * b;
        for (int e = 0; e < 4; e++)
            for (int i = 0; i < 32; i++) u[32 * e + i] = plus_one[(block[i] >> (2 * e)) & 3];
        for (int i = 0; i < MT; i++) {
            const int8_t* x = q + i * kp + BLOCK_W * b;
            int32_t sum = 0;
            for (int j = 0; j < BLOCK_W; j++) sum += (int32_t)u[j] * (int32_t)x[j];
            out[i] += (float)sum * s[i * (kp / BLOCK_W) + b];
        }
    }
}
#endif

/* ------------------------------------------------------ one token on AVX-512 VNNI: 64 weights per shift, as bytes */

#if defined(__AVX512VNNI__)
/* The decode GEMV where the CPU has 512-bit vpdpbusd. The weights enter as t + 1 in {0, 1, 2}, one byte each: one
   GFNI affine transform (or a shift and mask) of a 64-byte register gives 64 of them, against the int16 route's two
   shifts for 32 (rows4_dot_512). Exact route: each int16 code q (|q| <= SPLIT_MAX_CODE) is stored as two signed
   bytes, q = 256 h + l, multiplied by two vpdpbusd; each block's code sum is subtracted in int32 before the
   conversion to float, so every block sum stays the exact integer the int16 route computes. Int8 route: the codes'
   one byte, its correction subtracted per row as on the 256-bit route. Both take two blocks a register. */
#define BYTE_ROUTE 1
#define SPLIT_MAX_CODE 32639.0f  /* 127 * 256 + 127: the largest q whose h and l are both signed bytes */

/* One activation row in the exact route's byte form, pair-major (pair p = blocks 2p and 2p + 1; a missing block
   2p + 1 all zeros), each element one 512-bit register: high, low [pairs][4][64] (field e: block 2p's 32 bytes in
   the int8 route's extraction order, then block 2p + 1's), minus_sums [pairs][16] (int32: minus block 2p's code sum
   in lane 0, block 2p + 1's in lane 8, else 0), scales [pairs][16] (lanes 0-7 block 2p's scale, 8-15 block 2p + 1's) */
struct SplitRow {
    int8_t* high;
    int8_t* low;
    int32_t* minus_sums;
    float* scales;
};
static const size_t SPLIT_PAIR_BYTES = 2 * 4 * 64 + 16 * sizeof(int32_t) + 16 * sizeof(float);
static SplitRow split_row_at(void* base, int64_t pairs) {
    int8_t* high = (int8_t*)base;
    int32_t* minus_sums = (int32_t*)(high + 2 * pairs * 256);
    return {high, high + pairs * 256, minus_sums, (float*)(minus_sums + 16 * pairs)};
}

/* One activation row (x [k] of kind x_kind, times col_scale) -> its int16 codes q = 256 h + l (|q| <= SPLIT_MAX_CODE,
   h and l signed bytes) in the form of SplitRow */
static void quantize_activations_split(const void* x, int x_kind, const float* col_scale, int64_t k, int64_t kp,
                                       const SplitRow& row) {
    const int64_t nblocks = kp / BLOCK_W, pairs = (nblocks + 1) / 2;
    std::memset(row.high, 0, (size_t)pairs * SPLIT_PAIR_BYTES);  /* (a missing last block: zeros) */
    float values[BLOCK_W];
    int16_t codes[BLOCK_W];
    for (int64_t b = 0; b < nblocks; b++) {
        load_block(x, x_kind, BLOCK_W * b, col_scale, BLOCK_W * b, k, values);
        const float scale = quantize_block(values, codes, SPLIT_MAX_CODE);
        const int64_t pair = b / 2, half = b % 2;
        int32_t total = 0;
        for (int e = 0; e < 4; e++)
            for (int i = 0; i < 32; i++) {
                const int32_t q = codes[I8_COLUMN(e, i)], h = (q + 128) >> 8;  /* (floor: l = q - 256 h in -128..127) */
                const int64_t at = 256 * pair + 64 * e + 32 * half + i;
                row.high[at] = (int8_t)h;
                row.low[at] = (int8_t)(q - 256 * h);
                total += q;
            }
        row.minus_sums[16 * pair + 8 * half] = -total;
        for (int l = 0; l < 8; l++) row.scales[16 * pair + 8 * half + l] = scale;
    }
}

/* The 256 weights of a 64-byte register (two blocks) as t + 1 in {0, 1, 2}, one byte each: t[e] byte i from bits
   2e, 2e + 1 of byte i (the int8 route's extraction order). Each 2-bit code c -> c + 1 mod 4 (00 -> 01, 01 -> 10,
   11 -> 00; 10, never written, -> 11): the low bit negated, the high bit xor the low one. A zero byte (an odd last
   block's missing pair) becomes t + 1 = 1, against zero activations. */
static inline void weights_plus_one_512(__m512i v, __m512i* t) {
#if defined(__GFNI__)
    /* one affine bit transform per field (GFNI): output bit i of a byte is the parity of the byte AND the matrix's
       byte 7 - i, xor bit i of the constant 1 */
    for (int e = 0; e < 4; e++) {
        const uint64_t matrix = ((uint64_t)1 << (2 * e)) << 56 | ((uint64_t)3 << (2 * e)) << 48;
        t[e] = _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64((long long)matrix), 1);
    }
#else
    /* once for the four fields (v << 1 lines a field's low bit up with its high bit, 0xAA marks the high bits), then a
       shift and mask per field (16-bit shifts: bits crossing into a byte's top are masked off) */
    const __m512i u = _mm512_ternarylogic_epi32(v, _mm512_slli_epi16(v, 1), _mm512_set1_epi8((char)0xAA), 0x2D);
    const __m512i low2 = _mm512_set1_epi8(3);
    t[0] = _mm512_and_si512(u, low2);
    for (int e = 1; e < 4; e++) t[e] = _mm512_and_si512(_mm512_srli_epi16(u, 2 * e), low2);
#endif
}

/* Blocks b and b + 1 (b alone where PAIR is false) of four weight rows against activation bytes xh[0..3] (and, with
   LOW, the low bytes xl[0..3]: the block sums are 256 (xh . w) + (xl . w) + minus_sums): acc[r] += the two blocks'
   sums (lanes 0-7: block b, 8-15: block b + 1) times scale */
template <bool PAIR, bool LOW>
static inline void rows4_bytes_step(const uint8_t* const* rows, int64_t row_bytes, int64_t b, const __m512i* xh,
                                    const __m512i* xl, __m512i minus_sums, __m512 scale, __m512* acc) {
    for (int r = 0; r < 4; r++) {
        const uint8_t* block = rows[r] + 32 * b;
        PREFETCH_AHEAD(block, row_bytes, b);
        const __m512i v = PAIR ? _mm512_loadu_si512((const void*)block)
                               : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)block));
        __m512i t[4];
        weights_plus_one_512(v, t);
        __m512i hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), t[0], xh[0]);
        __m512i lo = LOW ? _mm512_dpbusd_epi32(minus_sums, t[0], xl[0]) : minus_sums;
        for (int e = 1; e < 4; e++) {
            hi = _mm512_dpbusd_epi32(hi, t[e], xh[e]);
            if (LOW) lo = _mm512_dpbusd_epi32(lo, t[e], xl[e]);
        }
        /* a lane: |256 hi + lo| <= 256 * 16 * 2 * 127 + 16 * 2 * 128 + 128 * 32639 < 2^24, so it converts exactly */
        const __m512i block_sums = LOW ? _mm512_add_epi32(_mm512_slli_epi32(hi, 8), lo) : hi;
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(block_sums), scale, acc[r]);
    }
}

static inline void hsum4_512(const __m512* acc, float* out) {
    __m256 halves[4];
    for (int r = 0; r < 4; r++)
        halves[r] = _mm256_add_ps(_mm512_castps512_ps256(acc[r]), _mm512_extractf32x8_ps(acc[r], 1));
    hsum4(halves, out);
}

/* Four weight rows (rows[0..3], a row may repeat) against one activation row in the exact route's byte form:
   out[0..3] = sum_b s_b sum_j t_j q_j, every block sum exact */
static inline void rows4_dot_split(const uint8_t* const* rows, int64_t row_bytes, const SplitRow& x, int64_t nblocks,
                                   float* out) {
    __m512 acc[4];
    for (int r = 0; r < 4; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nblocks; b += 2) {
        const int64_t pair = b / 2;
        __m512i xh[4], xl[4];
        for (int e = 0; e < 4; e++) {
            xh[e] = _mm512_loadu_si512((const void*)(x.high + 256 * pair + 64 * e));
            xl[e] = _mm512_loadu_si512((const void*)(x.low + 256 * pair + 64 * e));
        }
        const __m512i minus_sums = _mm512_loadu_si512((const void*)(x.minus_sums + 16 * pair));
        const __m512 scale = _mm512_loadu_ps(x.scales + 16 * pair);
        if (b + 2 <= nblocks) rows4_bytes_step<true, true>(rows, row_bytes, b, xh, xl, minus_sums, scale, acc);
        else rows4_bytes_step<false, true>(rows, row_bytes, b, xh, xl, minus_sums, scale, acc);
    }
    hsum4_512(acc, out);
}

/* Four weight rows (as rows4_dot_split) against one int8 activation row (quantize_activations_i8's codes q and block
   scales s): out[0..3] = sum_b s_b sum_j (t_j + 1) q_j */
template <bool PAIR>
static inline void rows4_i8_step(const uint8_t* const* rows, int64_t row_bytes, const int8_t* q, const float* s,
                                 int64_t b, __m512* acc) {
    __m512i x[4];
    for (int e = 0; e < 4; e++) x[e] = block_pair_codes<PAIR>(q + BLOCK_W * b + 32 * e);
    const __m512 scale = block_pair_scales<PAIR>(s + b);
    rows4_bytes_step<PAIR, false>(rows, row_bytes, b, x, x, _mm512_setzero_si512(), scale, acc);
}
static inline void rows4_dot_i8_512(const uint8_t* const* rows, int64_t row_bytes, const int8_t* q, const float* s,
                                    int64_t nblocks, float* out) {
    __m512 acc[4];
    for (int r = 0; r < 4; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nblocks; b += 2) {
        if (b + 2 <= nblocks) rows4_i8_step<true>(rows, row_bytes, q, s, b, acc);
        else rows4_i8_step<false>(rows, row_bytes, q, s, b, acc);
    }
    hsum4_512(acc, out);
}
#endif

/* ------------------------------------------------------------------------------------------------- the products */

/* The output row r belongs to (outputs start at starts[0..count), rows in increasing order: *g only advances) and
   how many rows that output has */
static inline int64_t output_of_row(int64_t r, const int64_t* starts, int count, int64_t n, int* g) {
    while (*g + 1 < count && r >= starts[*g + 1]) ++*g;
    return (*g + 1 < count ? starts[*g + 1] : n) - starts[*g];
}

/* bf16 prefill (AVX-512 BF16, vdpbf16ps) */
#if defined(__AVX512BF16__)
/* rows [r0, r0 + rows) of T as bf16 bit patterns (-1: 0xBF80, 0: 0, +1: 0x3F80) into out [rows, kp]: plane p of a
   block's 16 lanes is columns 16 p .. 16 p + 15, in order, so one permute per 16 weights maps codes to bf16 */
static void unpack_rows_bf16(const uint8_t* w, int64_t kp, int64_t r0, int64_t rows, uint16_t* out) {
    const __m256i bf16_of_code = _mm256_setr_epi16(0, 0x3F80, 0, (short)0xBF80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i low2 = _mm256_set1_epi16(3);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t* wr = w + (r0 + r) * (kp / 4);
        uint16_t* dst = out + r * kp;
        for (int64_t b = 0; b < kp / BLOCK_W; b++) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(wr + 32 * b));
            for (int p = 0; p < 8; p++) {
                const __m256i codes = _mm256_and_si256(_mm256_srli_epi16(v, 2 * p), low2);
                _mm256_storeu_si256((__m256i*)(dst + BLOCK_W * b + 16 * p),
                                    _mm256_permutexvar_epi16(codes, bf16_of_code));
            }
        }
    }
}

/* A column range of the product and the scale its sum is multiplied by (col_scale's value over the range) */
struct Segment { int64_t begin, end; float scale; };

/* total[t][r] = sum over segments of scale * sum_{j in segment} a[t * lda + j] * b[r * ldb + j] for MT activation rows
   a (bf16) and NR unpacked weight rows b (bf16): every product is exact in fp32 (weights are -1, 0 or +1), summed in
   fp32 lanes by vdpbf16ps (which reads bf16 subnormals as zero), 32 columns per instruction. A token's sums do not
   depend on MT or NR. */
template <int MT, int NR>
static inline void bf16_tile(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, const Segment* segments,
                             int count, float total[MT][NR]) {
    for (int t = 0; t < MT; t++)
        for (int r = 0; r < NR; r++) total[t][r] = 0.0f;
    for (int g = 0; g < count; g++) {
        __m512 acc[MT][NR];
        for (int t = 0; t < MT; t++)
            for (int r = 0; r < NR; r++) acc[t][r] = _mm512_setzero_ps();
        int64_t j = segments[g].begin;
        const int64_t end = segments[g].end;
        for (; j < end; j += 32) {
            const __mmask32 mask = end - j >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << (end - j)) - 1);
            __m512bh weights[NR];
            for (int r = 0; r < NR; r++) weights[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, b + r * ldb + j);
            for (int t = 0; t < MT; t++) {
                const __m512bh x = (__m512bh)_mm512_maskz_loadu_epi16(mask, a + t * lda + j);
                for (int r = 0; r < NR; r++) acc[t][r] = _mm512_dpbf16_ps(acc[t][r], x, weights[r]);
            }
        }
        for (int t = 0; t < MT; t++)
            for (int r = 0; r < NR; r++) total[t][r] += segments[g].scale * _mm512_reduce_add_ps(acc[t][r]);
    }
}

/* ternary_product's result for bf16 activations x [m, k] (row stride x_stride; the segments cover [0, k)) on the
   bf16 route: per task 16 weight rows unpacked to bf16 once, then tiles of 4 tokens x 4 rows over every token;
   y = row_scale * the fp32 sum, rounded once to bf16 (the int16 route quantizes the activations; this one multiplies
   them as they are). */
static void bf16_product(const uint16_t* x, int64_t x_stride, int64_t m, const uint8_t* w, int64_t n,
                         int64_t kp, const float* row_scale, const Segment* segments, int count, void* const* outputs,
                         const int64_t* starts, int outputs_count) {
    const int64_t panel_rows = 16;
    const size_t panel = (size_t)(panel_rows * kp);  /* elements of one [16, kp] unpacked panel */
    const int slots = std::max(1, at::get_num_threads());
    ScratchGuard scratch(sizeof(uint16_t) * panel * (size_t)slots);
    uint16_t* unpacked_all = (uint16_t*)scratch.data;  /* [slots, 16, kp] */
    std::atomic<int> next_slot{0};
    at::parallel_for(0, (n + panel_rows - 1) / panel_rows, 1, [&](int64_t task_begin, int64_t task_end) {
        /* one slot per invocation (one per thread: at most `slots`); any beyond get a buffer of their own */
        const int slot = next_slot.fetch_add(1);
        std::unique_ptr<uint16_t[]> own(slot < slots ? nullptr : new uint16_t[panel]);
        uint16_t* unpacked = own ? own.get() : unpacked_all + (size_t)slot * panel;  /* [16, kp] */
        for (int64_t task = task_begin; task < task_end; task++) {
            const int64_t r0 = task * panel_rows, rows = std::min(panel_rows, n - r0);
            unpack_rows_bf16(w, kp, r0, rows, unpacked);
            int g = 0, output[16];  /* row r0 + i belongs to outputs[output[i]], which has rows_g[i] rows */
            int64_t rows_g[16];
            for (int64_t i = 0; i < rows; i++) {
                rows_g[i] = output_of_row(r0 + i, starts, outputs_count, n, &g);
                output[i] = g;
            }
            auto store = [&](int64_t token, int64_t r, float value) {
                const int64_t i = r - r0, column = r - starts[output[i]];
                store_value(outputs[output[i]], BF16, token * rows_g[i] + column, value * row_scale[r]);
            };
            int64_t t = 0;
            for (; t < m; t += 4) {
                const int64_t tokens = std::min<int64_t>(4, m - t);
                const uint16_t* a = x + t * x_stride;
                int64_t r = 0;
                for (; r + 4 <= rows; r += 4) {
                    float total[4][4];
                    const uint16_t* b = unpacked + r * kp;
                    switch (tokens) {
                        case 4: bf16_tile<4, 4>(a, x_stride, b, kp, segments, count, total); break;
                        case 3: bf16_tile<3, 4>(a, x_stride, b, kp, segments, count, total); break;
                        case 2: bf16_tile<2, 4>(a, x_stride, b, kp, segments, count, total); break;
                        default: bf16_tile<1, 4>(a, x_stride, b, kp, segments, count, total); break;
                    }
                    for (int64_t i = 0; i < tokens; i++)
                        for (int q = 0; q < 4; q++) store(t + i, r0 + r + q, total[i][q]);
                }
                for (; r < rows; r++)
                    for (int64_t i = 0; i < tokens; i++) {
                        float total[1][1];
                        bf16_tile<1, 1>(a + i * x_stride, x_stride, unpacked + r * kp, kp, segments, count, total);
                        store(t + i, r0 + r, total[0][0]);
                    }
            }
        }
    });
}
#endif

/* y_g[i, r - start_g] = row_scale[r] * sum_j t[r, j] * x[i, j] * (col_scale ? col_scale[j] : 1) for the rows r of
   every output g (outputs: `count` pointers, each [m, rows_g], rows consecutive), x: [m, k] of kind x_kind with row
   stride x_stride, w: [n, kp / 4] in the 2-bit layout. */
static void ternary_product(const void* x, int x_kind, int64_t x_stride, const float* col_scale, int64_t m, int64_t k,
                            const uint8_t* w, int64_t n, int64_t kp, const float* row_scale,
                            void* const* outputs, const int64_t* starts, int count, int y_kind, bool int8) {
    const int passes = x_kind == F32 && !int8 ? 2 : 1;
    const int64_t nblocks = kp / BLOCK_W, rows_q = m * passes;
    const size_t q_bytes = (size_t)(rows_q * kp) * (int8 ? sizeof(int8_t) : sizeof(int16_t));
#if defined(BYTE_ROUTE)
    const bool split = m == 1 && passes == 1 && !int8;  /* one 16-bit token: its codes as two bytes */
    const size_t scratch_bytes = split ? (size_t)((nblocks + 1) / 2) * SPLIT_PAIR_BYTES : 0;
#else
    const size_t scratch_bytes = 0;
#endif
    const size_t codes_bytes = q_bytes + sizeof(float) * (size_t)(rows_q * nblocks + (int8 ? m : 0));
    ScratchGuard scratch(std::max(scratch_bytes, codes_bytes));
    int16_t* q = (int16_t*)scratch.data;     /* int16 route: [rows_q, kp] */
    int8_t* q8 = (int8_t*)scratch.data;      /* int8 route: [m, kp] */
    float* s = (float*)((char*)scratch.data + q_bytes);  /* [rows_q, nblocks] */
    float* c = s + rows_q * nblocks;                     /* int8 route: [m] */
#if defined(BYTE_ROUTE)
    const SplitRow split_row = split_row_at(scratch.data, (nblocks + 1) / 2);  /* (split: all of the scratch) */
    if (split) quantize_activations_split(x, x_kind, col_scale, k, kp, split_row);
    else
#endif
    if (int8) quantize_activations_i8(x, x_kind, x_stride, col_scale, m, k, kp, q8, s, c);
    else quantize_activations(x, x_kind, x_stride, col_scale, m, k, kp, passes, q, s);
    const int64_t row_chunk = 16, token_chunk = 16;
    /* Tokens in panels whose quantized activations fit in half a typical L2 (512 KiB): every 16-row task reads the
       whole panel, and a panel streamed from L3 or memory for each task made 512 bf16 tokens 3.5x slower than 256
       (the weights, read once per panel, come from L3 instead) */
    const int64_t code_bytes = kp * passes * (int8 ? 1 : 2);
    const int64_t panel = std::max<int64_t>(token_chunk, ((int64_t)512 << 10) / code_bytes / token_chunk * token_chunk);
    for (int64_t p0 = 0; p0 < m; p0 += panel) {
        const int64_t p1 = std::min(p0 + panel, m);
        at::parallel_for(0, (n + row_chunk - 1) / row_chunk, 1, [&](int64_t task_begin, int64_t task_end) {
            float dots[2 * 16];
            for (int64_t task = task_begin; task < task_end; task++) {
                const int64_t r0 = task * row_chunk, r1 = r0 + row_chunk < n ? r0 + row_chunk : n;
                for (int64_t m0 = p0; m0 < p1; m0 += token_chunk) {
                    const int64_t m1 = m0 + token_chunk < p1 ? m0 + token_chunk : p1;
                    const int64_t q0 = m0 * passes, q1 = m1 * passes;
                    int g = 0;  /* the output of row r */
#if defined(__AVX2__)
                    if (q1 - q0 == 1) {  /* one activation row (a decode step): rows four at a time */
                        float row_dots[16 + 3];
                        const float* scales = s + q0 * nblocks;
                        const int64_t row_bytes = kp / 4;
                        int64_t r = r0;
#if defined(BYTE_ROUTE)
                        if (split || int8) {  /* (the last rows of a chunk: the last row repeated) */
                            for (; r < r1; r += 4) {
                                const uint8_t* rows[4];
                                for (int j = 0; j < 4; j++) rows[j] = w + std::min(r + j, r1 - 1) * row_bytes;
                                if (split) rows4_dot_split(rows, row_bytes, split_row, nblocks, row_dots + r - r0);
                                else rows4_dot_i8_512(rows, row_bytes, q8 + q0 * kp, scales, nblocks,
                                                      row_dots + r - r0);
                            }
                        } else
#endif
                        if (int8) {
                            const int8_t* codes = q8 + q0 * kp;
                            for (; r + 4 <= r1; r += 4)
                                rows4_dot_i8(w + r * row_bytes, row_bytes, codes, scales, nblocks, row_dots + r - r0);
                            for (; r < r1; r++)
                                row_dot_i8<1>(w + r * row_bytes, codes, scales, kp, nblocks, row_dots + r - r0);
                        } else {
                            const int16_t* codes = q + q0 * kp;
#if defined(__AVX512BW__)
                            for (; r + 4 <= r1; r += 4)
                                rows4_dot_512(w + r * row_bytes, row_bytes, codes, scales, nblocks, row_dots + r - r0);
#else
                            for (; r + 4 <= r1; r += 4)
                                rows4_dot_256(w + r * row_bytes, row_bytes, codes, scales, nblocks, row_dots + r - r0);
#endif
                            for (; r < r1; r++)
                                row_dot<1>(w + r * row_bytes, codes, scales, kp, nblocks, row_dots + r - r0);
                        }
                        for (r = r0; r < r1; r++) {
                            const int64_t rows_g = output_of_row(r, starts, count, n, &g);
                            const float dot = int8 ? row_dots[r - r0] - c[m0] : row_dots[r - r0];
                            store_value(outputs[g], y_kind, m0 * rows_g + (r - starts[g]), dot * row_scale[r]);
                        }
                        continue;
                    }
#endif
                    for (int64_t r = r0; r < r1; r++) {
                        const uint8_t* wr = w + r * (kp / 4);
                        int64_t i = q0;
                        if (int8) {
                            for (; i + TILE_ROWS <= q1; i += TILE_ROWS)
                                row_dot_i8<TILE_ROWS>(wr, q8 + i * kp, s + i * nblocks, kp, nblocks, dots + (i - q0));
                            for (; i < q1; i++)
                                row_dot_i8<1>(wr, q8 + i * kp, s + i * nblocks, kp, nblocks, dots + (i - q0));
                        } else {
                            for (; i + TILE_ROWS <= q1; i += TILE_ROWS)
                                row_dot<TILE_ROWS>(wr, q + i * kp, s + i * nblocks, kp, nblocks, dots + (i - q0));
                            for (; i + 2 <= q1; i += 2)
                                row_dot<2>(wr, q + i * kp, s + i * nblocks, kp, nblocks, dots + (i - q0));
                            for (; i < q1; i++)
                                row_dot<1>(wr, q + i * kp, s + i * nblocks, kp, nblocks, dots + (i - q0));
                        }
                        const int64_t rows_g = output_of_row(r, starts, count, n, &g);
                        for (int64_t token = m0; token < m1; token++) {
                            const float* d = dots + (token - m0) * passes;
                            const float dot = int8 ? d[0] - c[token] : passes == 2 ? d[0] + d[1] : d[0];
                            store_value(outputs[g], y_kind, token * rows_g + (r - starts[g]), dot * row_scale[r]);
                        }
                    }
                }
            }
        });
    }
}

static int element_kind(const at::Tensor& t) {
    if (t.scalar_type() == at::kFloat) return F32;
    if (t.scalar_type() == at::kBFloat16) return BF16;
    if (t.scalar_type() == at::kHalf) return F16;
    return -1;
}

/* x [..., k] as a [m, k] matrix of fp32 / bf16 / fp16 with unit column stride */
static at::Tensor activations(const at::Tensor& x) {
    TORCH_CHECK(x.device().is_cpu(), "the CPU 2-bit kernel takes CPU tensors, got ", x.device());
    TORCH_CHECK(x.dim() >= 1, "the activations need at least one dimension");
    at::Tensor flat = x.reshape({-1, x.size(-1)});
    if (element_kind(flat) < 0) flat = flat.to(at::kFloat);
    if (flat.stride(1) != 1) flat = flat.contiguous();
    return flat;
}

static std::vector<at::Tensor> ternary_outputs(const at::Tensor& x, const at::Tensor& packed,
                                               const at::Tensor& row_scale, const c10::optional<at::Tensor>& col_scale,
                                               std::vector<int64_t> outs, int64_t activation_bits) {
    TORCH_CHECK(activation_bits == 16 || activation_bits == 8, "activation_bits must be 16 (exact) or 8, got ",
                activation_bits);
    const bool int8 = activation_bits == 8;
    TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 2 && packed.is_contiguous(),
                "packed must be a contiguous uint8 [out, padded_in / 4] tensor");
    TORCH_CHECK(row_scale.scalar_type() == at::kFloat && row_scale.is_contiguous() &&
                row_scale.numel() == packed.size(0),
                "row_scale must be a contiguous float32 tensor of one scale per output row");
    const int64_t n = packed.size(0), kp = packed.size(1) * 4, k = x.size(-1);
    TORCH_CHECK(kp % BLOCK_W == 0 && k <= kp && kp - k < BLOCK_W, "x's last dimension (", k,
                ") does not match the packed rows (", kp, " padded columns)");
    int64_t total = 0;
    for (int64_t rows : outs) total += rows;
    TORCH_CHECK(total == n, "the outputs' rows (", total, ") must add up to the packed rows (", n, ")");
    const float* col = nullptr;
    at::Tensor col_tensor;
    if (col_scale.has_value()) {
        col_tensor = col_scale->to(at::kFloat).contiguous();
        TORCH_CHECK(col_tensor.numel() == k, "col_scale needs one scale per input column");
        col = col_tensor.data_ptr<float>();
    }
    at::Tensor flat = activations(x);
    const int64_t m = flat.size(0);
    std::vector<int64_t> leading(x.sizes().begin(), x.sizes().end() - 1);
    std::vector<at::Tensor> results;
    std::vector<void*> pointers;
    std::vector<int64_t> starts;
    auto allocate_outputs = [&]() {  /* one [..., rows_g] tensor per output, its data pointer and first row */
        int64_t start = 0;
        for (int64_t rows_g : outs) {
            std::vector<int64_t> shape = leading;
            shape.push_back(rows_g);
            results.push_back(at::empty(shape, flat.options()));
            pointers.push_back(results.back().data_ptr());
            starts.push_back(start);
            start += rows_g;
        }
    };
    const bool fp32 = flat.scalar_type() == at::kFloat;
#if defined(__AVX512BF16__)
    /* bf16 prefill: products of the activations as they are (no quantization), summed in fp32; col_scale's runs of
       equal values become segments whose sums are scaled after the products (an x_j * col_j rounded to bf16 would
       not be exact). Where int8 activations were asked for, this route is both faster and exact from
       BF16_GEMM_MIN_TOKENS_INT8 tokens on (1.1B prefill of 512 tokens: 142-152 tok/s against 109-127), so it serves
       them too: the int8 error bound holds a fortiori. */
    std::vector<Segment> segments;
    if (flat.scalar_type() == at::kBFloat16 && m >= (int8 ? BF16_GEMM_MIN_TOKENS_INT8 : BF16_GEMM_MIN_TOKENS)) {
        if (!col && k > 0) segments.push_back({0, k, 1.0f});
        for (int64_t j = 0; col && j < k && (int)segments.size() <= BF16_MAX_SEGMENTS; j++) {
            if (segments.empty() || col[j] != segments.back().scale) segments.push_back({j, j + 1, col[j]});
            else segments.back().end = j + 1;
        }
    }
    if (!segments.empty() && (int)segments.size() <= BF16_MAX_SEGMENTS) {
        allocate_outputs();
        bf16_product((const uint16_t*)flat.data_ptr(), flat.stride(0), m, packed.data_ptr<uint8_t>(), n, kp,
                     row_scale.data_ptr<float>(), segments.data(), (int)segments.size(), pointers.data(),
                     starts.data(), (int)outs.size());
        return results;
    }
#endif
    if (!int8 && m >= (fp32 ? GEMM_MIN_TOKENS : GEMM_MIN_TOKENS_16BIT)) {
        /* prefill: unpack T in row chunks of at most 16 MiB and multiply with torch's fp32 GEMM (bf16 / fp16
           activations widened to fp32 exactly; the outputs rounded once to their dtype) */
        at::Tensor wide = fp32 ? flat : flat.to(at::kFloat);
        at::Tensor xs = col ? wide.mul(col_tensor) : wide;
        at::Tensor y = at::empty({m, n}, wide.options());
        const int64_t rows = std::max<int64_t>(1, ((int64_t)1 << 22) / k);
        at::Tensor weights = at::empty({std::min(rows, n), k}, wide.options());
        for (int64_t start = 0; start < n; start += rows) {
            const int64_t stop = std::min(start + rows, n);
            at::Tensor chunk = weights.narrow(0, 0, stop - start);
            unpack_rows(packed.data_ptr<uint8_t>(), kp, k, start, stop, chunk.data_ptr<float>());
            y.narrow(1, start, stop - start).copy_(at::mm(xs, chunk.t()));
        }
        y.mul_(row_scale);
        int64_t start = 0;
        for (int64_t rows_g : outs) {
            std::vector<int64_t> shape = leading;
            shape.push_back(rows_g);
            results.push_back(y.narrow(1, start, rows_g).contiguous().view(shape).to(x.scalar_type()));
            start += rows_g;
        }
        return results;
    }
    allocate_outputs();
    ternary_product(flat.data_ptr(), element_kind(flat), flat.stride(0), col, m, k, packed.data_ptr<uint8_t>(), n, kp,
                    row_scale.data_ptr<float>(), pointers.data(), starts.data(), (int)outs.size(), element_kind(flat),
                    int8);
    if (flat.scalar_type() != x.scalar_type())
        for (auto& result : results) result = result.to(x.scalar_type());
    return results;
}

at::Tensor ternary_mm(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& row_scale,
                      const c10::optional<at::Tensor>& col_scale, int64_t activation_bits) {
    return ternary_outputs(x, packed, row_scale, col_scale, {packed.size(0)}, activation_bits)[0];
}

std::vector<at::Tensor> ternary_mm_fused(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& row_scale,
                                         at::IntArrayRef outs, int64_t activation_bits) {
    return ternary_outputs(x, packed, row_scale, c10::nullopt, outs.vec(), activation_bits);
}

at::Tensor int8_mm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& row_scale) {
    TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 2 && weight.is_contiguous() &&
                weight.size(1) % 16 == 0, "weight must be a contiguous int8 [out, in] tensor, in a multiple of 16");
    TORCH_CHECK(row_scale.scalar_type() == at::kFloat && row_scale.is_contiguous() &&
                row_scale.numel() == weight.size(0),
                "row_scale must be a contiguous float32 tensor of one scale per output row");
    const int64_t n = weight.size(0), k = weight.size(1);
    TORCH_CHECK(x.size(-1) == k, "x's last dimension (", x.size(-1), ") is not the weight's (", k, ")");
    at::Tensor flat = activations(x);
    const int64_t m = flat.size(0);
    const int passes = element_kind(flat) == F32 ? 2 : 1;
    const int64_t kp = (k + BLOCK_W - 1) / BLOCK_W * BLOCK_W, nblocks = kp / BLOCK_W, rows_q = m * passes;
    const size_t q_bytes = (size_t)(rows_q * kp) * sizeof(int16_t);
    ScratchGuard scratch(q_bytes + sizeof(float) * (size_t)(rows_q * nblocks));
    int16_t* q = (int16_t*)scratch.data;
    float* s = (float*)((char*)scratch.data + q_bytes);
    quantize_activations(flat.data_ptr(), element_kind(flat), flat.stride(0), nullptr, m, k, kp, passes, q, s);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
    shape.push_back(n);
    at::Tensor y = at::empty(shape, flat.options());
    void* out = y.data_ptr();
    const int kind = element_kind(flat);
    const int8_t* w = weight.data_ptr<int8_t>();
    const float* rs = row_scale.data_ptr<float>();
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; r++) {  /* a row's k bytes stay in L1 across the tokens */
            for (int64_t i = 0; i < m; i++) {
                float dot = 0.0f;
                for (int pass = 0; pass < passes; pass++)
                    dot += int8_row_dot(w + r * k, q + (i * passes + pass) * kp, s + (i * passes + pass) * nblocks, k);
                store_value(out, kind, i * n + r, dot * rs[r]);
            }
        }
    });
    return flat.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}

at::Tensor ternary_unpack(const at::Tensor& packed, int64_t in_features) {
    TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 2 && packed.is_contiguous(),
                "packed must be a contiguous uint8 [out, padded_in / 4] tensor");
    const int64_t n = packed.size(0), kp = packed.size(1) * 4;
    TORCH_CHECK(in_features <= kp, "in_features exceeds the packed rows");
    at::Tensor out = at::empty({n, in_features}, packed.options().dtype(at::kFloat));
    unpack_rows(packed.data_ptr<uint8_t>(), kp, in_features, 0, n, out.data_ptr<float>());
    return out;
}

/* ------------------------------------------------------------------------------ dense products (the LM head) */

/* sum_j w_j v_j over k elements: w of `kind` (fp32 / bf16 / fp16), v fp32; fp32 accumulation */
static inline float dense_row_dot(const void* w, int kind, const float* v, int64_t k) {
    int64_t j = 0;
    float total = 0.0f;
#if defined(__AVX2__)
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (; j + 32 <= k; j += 32) {
        for (int u = 0; u < 4; u++) {
            const int64_t c = j + 8 * u;
            acc[u] = _mm256_fmadd_ps(load8(w, kind, c), _mm256_loadu_ps(v + c), acc[u]);
        }
    }
    total = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
#else
    float lanes[16] = {0};  /* 16 partial sums, as the AVX2 code keeps: a sequential fp32 sum drifts further */
    for (; j + 16 <= k; j += 16)
        for (int l = 0; l < 16; l++) lanes[l] += load_value(w, kind, j + l) * v[j + l];
    for (int l = 0; l < 16; l++) total += lanes[l];
#endif
    for (; j < k; j++) total += load_value(w, kind, j) * v[j];
    return total;
}

/* y = x W^T for a few tokens (the LM head of a decode step): x [..., k] and W [n, k] of one kind (fp32 / bf16 / fp16)
   -> [..., n] in that kind; fp32 accumulation, each product rounded once (as torch's GEMM does). A row of W is read
   once for all tokens: a memory-bound GEMV on torch's thread pool. */
at::Tensor dense_mm(const at::Tensor& x, const at::Tensor& weight) {
    TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous() && weight.scalar_type() == x.scalar_type() &&
                element_kind(weight) >= 0, "weight must be a contiguous [out, in] tensor of x's dtype (float32, ",
                "bfloat16 or float16)");
    const int64_t n = weight.size(0), k = weight.size(1);
    TORCH_CHECK(x.size(-1) == k, "x's last dimension (", x.size(-1), ") is not the weight's (", k, ")");
    at::Tensor flat = activations(x);
    const int64_t m = flat.size(0);
    const int kind = element_kind(flat);
    ScratchGuard scratch(sizeof(float) * (size_t)(m * k));
    float* values = (float*)scratch.data;  /* x as fp32 [m, k] */
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < k; j++) values[i * k + j] = load_value(flat.data_ptr(), kind, i * flat.stride(0) + j);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
    shape.push_back(n);
    at::Tensor y = at::empty(shape, flat.options());
    void* out = y.data_ptr();
    const char* w = (const char*)weight.data_ptr();
    const size_t row_bytes = (size_t)k * weight.element_size();
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; r++)
            for (int64_t i = 0; i < m; i++)
                store_value(out, kind, i * n + r, dense_row_dot(w + r * row_bytes, kind, values + i * k, k));
    });
    return y;
}

/* ------------------------------------------------------------------------------- decoder block steps (inference) */

/* v rounded to the element kind, as storing and loading it would do (fp32: v itself) */
static inline float round_to(int kind, float v) {
    if (kind == BF16) return (float)c10::BFloat16(v);
    if (kind == F16) return (float)c10::Half(v);
    return v;
}

/* transformers' LlamaRMSNorm of each row of x [m, h] into out [m, h] (x's kind, weight [h] too): in fp32,
   out = w * round(x * rsqrt(mean(x^2) + eps)), rounded where transformers rounds (to x's kind). */
static void rms_norm_rows(const void* x, void* out, int kind, const void* weight, int64_t m, int64_t h, float eps) {
    at::parallel_for(0, m, std::max<int64_t>(1, 65536 / h), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; i++) {
            double squares = 0.0;
            for (int64_t j = 0; j < h; j++) {
                const float v = load_value(x, kind, i * h + j);
                squares += (double)v * v;
            }
            const float inverse = 1.0f / std::sqrt((float)(squares / (double)h) + eps);
            for (int64_t j = 0; j < h; j++) {
                const float normalized = round_to(kind, load_value(x, kind, i * h + j) * inverse);
                store_value(out, kind, i * h + j, load_value(weight, kind, j) * normalized);
            }
        }
    });
}

/* transformers' apply_rotary_pos_emb in place on t [b, s, heads * d] (contiguous): per head,
   u_i = round(round(t_i cos_i) + round(r_i sin_i)) with r = (-t[d/2:], t[:d/2]); cos, sin [b or 1, s, d] */
static void rotate_heads(at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin, int64_t head_dim) {
    const int kind = element_kind(t);
    const int64_t b = t.size(0), s = t.size(1), heads = t.size(2) / head_dim, half = head_dim / 2;
    TORCH_CHECK(t.size(2) % head_dim == 0 && head_dim % 2 == 0, "the projection is not a whole number of heads");
    TORCH_CHECK(cos.scalar_type() == t.scalar_type() && sin.scalar_type() == t.scalar_type() && cos.is_contiguous() &&
                sin.is_contiguous() && cos.dim() == 3 && cos.sizes() == sin.sizes() && cos.size(1) == s &&
                cos.size(2) == head_dim && (cos.size(0) == 1 || cos.size(0) == b),
                "cos and sin must be contiguous [batch or 1, seq, head_dim] tensors of the activations' dtype");
    void* data = t.data_ptr();
    const void* c = cos.data_ptr();
    const void* sn = sin.data_ptr();
    const bool shared = cos.size(0) == 1;
    at::parallel_for(0, b * s, std::max<int64_t>(1, 16384 / t.size(2)), [&](int64_t begin, int64_t end) {
        std::vector<float> head(head_dim);
        for (int64_t row = begin; row < end; row++) {
            const int64_t angle = (shared ? row % s : row) * head_dim;
            for (int64_t h = 0; h < heads; h++) {
                const int64_t base = row * heads * head_dim + h * head_dim;
                for (int64_t i = 0; i < head_dim; i++) head[i] = load_value(data, kind, base + i);
                for (int64_t i = 0; i < head_dim; i++) {
                    const float rotated = i < half ? -head[i + half] : head[i - half];
                    const float a = round_to(kind, head[i] * load_value(c, kind, angle + i));
                    const float r = round_to(kind, rotated * load_value(sn, kind, angle + i));
                    store_value(data, kind, base + i, a + r);
                }
            }
        }
    });
}

/* out = round(a + b) elementwise over `count` elements of one kind (out may be a) */
static void add_rounded(void* out, const void* a, const void* b, int kind, int64_t count) {
    at::parallel_for(0, count, 65536, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; j++)
            store_value(out, kind, j, load_value(a, kind, j) + load_value(b, kind, j));
    });
}

static void check_block_operand(const at::Tensor& t, const at::Tensor& like, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == like.scalar_type() &&
                element_kind(t) >= 0, name, " must be a contiguous CPU tensor of the hidden states' dtype ",
                "(float32, bfloat16 or float16)");
}

/* The attention inputs of a decoder block: q, k, v = rotary(project(rms_norm(hidden))), the projections one stacked
   2-bit product (q/k/v's rows, `outs` rows each), q and k rotated. hidden [b, s, h] -> [b, s, outs_i] each. */
std::vector<at::Tensor> attention_inputs(const at::Tensor& hidden, const at::Tensor& norm_weight, double eps,
                                         const at::Tensor& packed, const at::Tensor& row_scale, at::IntArrayRef outs,
                                         const at::Tensor& cos, const at::Tensor& sin, int64_t head_dim,
                                         int64_t activation_bits) {
    check_block_operand(hidden, hidden, "hidden");
    check_block_operand(norm_weight, hidden, "the norm weight");
    TORCH_CHECK(hidden.dim() == 3 && norm_weight.numel() == hidden.size(2) && outs.size() == 3,
                "attention_inputs takes hidden [batch, seq, hidden], a norm weight [hidden] and 3 outputs");
    const int kind = element_kind(hidden);
    at::Tensor normed = at::empty(hidden.sizes(), hidden.options());
    rms_norm_rows(hidden.data_ptr(), normed.data_ptr(), kind, norm_weight.data_ptr(), hidden.size(0) * hidden.size(1),
                  hidden.size(2), (float)eps);
    std::vector<at::Tensor> qkv = ternary_outputs(normed, packed, row_scale, c10::nullopt, outs.vec(), activation_bits);
    rotate_heads(qkv[0], cos, sin, head_dim);
    rotate_heads(qkv[1], cos, sin, head_dim);
    return qkv;
}

/* The rest of a decoder block after attention: h = residual + o_proj(attention); returns
   h + down(silu(gate) * up) with gate, up = project(rms_norm(h)), every step rounded to the hidden states' dtype as
   transformers' Llama block rounds it. attention [b, s, heads * d], residual [b, s, h] -> [b, s, h]. */
at::Tensor attention_output_and_mlp(const at::Tensor& attention, const at::Tensor& residual,
                                    const at::Tensor& o_packed, const at::Tensor& o_row_scale,
                                    const c10::optional<at::Tensor>& o_col_scale, const at::Tensor& norm_weight,
                                    double eps, const at::Tensor& gate_up_packed, const at::Tensor& gate_up_row_scale,
                                    at::IntArrayRef gate_up_outs, const at::Tensor& down_packed,
                                    const at::Tensor& down_row_scale, const c10::optional<at::Tensor>& down_col_scale,
                                    int64_t activation_bits) {
    check_block_operand(attention, residual, "the attention output");
    check_block_operand(residual, residual, "the residual");
    check_block_operand(norm_weight, residual, "the norm weight");
    TORCH_CHECK(residual.dim() == 3 && norm_weight.numel() == residual.size(2) && gate_up_outs.size() == 2,
                "attention_output_and_mlp takes a residual [batch, seq, hidden], a norm weight [hidden] and 2 MLP "
                "outputs");
    const int kind = element_kind(residual);
    const int64_t count = residual.numel(), m = residual.size(0) * residual.size(1), h = residual.size(2);
    at::Tensor o = ternary_outputs(attention, o_packed, o_row_scale, o_col_scale, {o_packed.size(0)},
                                   activation_bits)[0];
    TORCH_CHECK(o.sizes() == residual.sizes(), "o_proj's output does not match the residual");
    at::Tensor hidden = at::empty(residual.sizes(), residual.options());
    void* hd = hidden.data_ptr();
    add_rounded(hd, residual.data_ptr(), o.data_ptr(), kind, count);
    at::Tensor normed = at::empty(residual.sizes(), residual.options());
    rms_norm_rows(hd, normed.data_ptr(), kind, norm_weight.data_ptr(), m, h, (float)eps);
    std::vector<at::Tensor> gate_up = ternary_outputs(normed, gate_up_packed, gate_up_row_scale, c10::nullopt,
                                                      gate_up_outs.vec(), activation_bits);
    TORCH_CHECK(gate_up[0].sizes() == gate_up[1].sizes(), "gate and up must have the same width");
    void* gd = gate_up[0].data_ptr();
    const void* ud = gate_up[1].data_ptr();
    at::parallel_for(0, gate_up[0].numel(), 65536, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; j++) {
            const float g = load_value(gd, kind, j);
            const float activated = round_to(kind, g / (1.0f + std::exp(-g)));  /* silu, rounded as torch's is */
            store_value(gd, kind, j, activated * load_value(ud, kind, j));
        }
    });
    at::Tensor down = ternary_outputs(gate_up[0], down_packed, down_row_scale, down_col_scale, {down_packed.size(0)},
                                      activation_bits)[0];
    TORCH_CHECK(down.sizes() == residual.sizes(), "down_proj's output does not match the residual");
    add_rounded(hd, hd, down.data_ptr(), kind, count);
    return hidden;
}

/* acc[j] += a * x_j over d elements, x of `kind`: one step of a probability-weighted sum of value rows */
static inline void add_scaled_row(float* acc, float a, const void* x, int kind, int64_t d) {
    int64_t j = 0;
#if defined(__AVX2__)
    const __m256 factor = _mm256_set1_ps(a);
    for (; j + 8 <= d; j += 8)
        _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(load8(x, kind, j), factor, _mm256_loadu_ps(acc + j)));
#endif
    for (; j < d; j++) acc[j] += a * load_value(x, kind, j);
}

/* The attention of one new token per sequence over the cached keys and values (a decode step): softmax(q k^T *
   scaling) v per head over the tokens the mask shows (all without one), fp32 throughout, the output rounded once to
   the query's dtype. query [b, 1, heads * d] (contiguous, as attention_inputs returns it), key and value
   [b, kv_heads, t, d] with contiguous rows (the KV cache's tensors; query head h reads kv head h / (heads /
   kv_heads)), mask: transformers' boolean sdpa mask [b or 1, 1, 1, t] (a static cache's unwritten slots, padding)
   -> [b, 1, heads * d]. */
at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            const c10::optional<at::Tensor>& mask, double scaling) {
    check_block_operand(query, query, "the query");
    TORCH_CHECK(query.dim() == 3 && query.size(1) == 1 && key.dim() == 4 && value.sizes() == key.sizes() &&
                key.device().is_cpu() && value.device().is_cpu() && key.scalar_type() == query.scalar_type() &&
                value.scalar_type() == query.scalar_type() && key.stride(3) == 1 && value.stride(3) == 1 &&
                key.size(0) == query.size(0), "decode_attention takes a query [batch, 1, heads * head_dim] and ",
                "keys and values [batch, kv_heads, tokens, head_dim] of its dtype with contiguous rows");
    const int kind = element_kind(query);
    const int64_t b = query.size(0), kv_heads = key.size(1), t = key.size(2), d = key.size(3);
    TORCH_CHECK(t > 0 && d > 0 && query.size(2) % d == 0 && (query.size(2) / d) % kv_heads == 0,
                "the query's width is not a multiple of the key heads' (", kv_heads, " x ", d, ")");
    const int64_t heads = query.size(2) / d, group = heads / kv_heads;
    const bool* visible = nullptr;  /* mask: visible[batch * mask_batch_stride + i * mask_stride], True = attend */
    int64_t mask_batch_stride = 0, mask_stride = 0;
    if (mask.has_value()) {
        const at::Tensor& m = *mask;
        TORCH_CHECK(m.scalar_type() == at::kBool && m.device().is_cpu() && m.dim() == 4 && m.size(1) == 1 &&
                    m.size(2) == 1 && m.size(3) == t && (m.size(0) == 1 || m.size(0) == b),
                    "the mask must be a boolean [batch or 1, 1, 1, tokens] tensor (True: attend)");
        visible = m.data_ptr<bool>();
        mask_batch_stride = m.size(0) == 1 ? 0 : m.stride(0);
        mask_stride = m.stride(3);
    }
    at::Tensor out = at::empty(query.sizes(), query.options());
    const size_t element = query.element_size();
    const char* keys = (const char*)key.data_ptr();
    const char* values = (const char*)value.data_ptr();
    const void* q = query.data_ptr();
    void* o = out.data_ptr();
    at::parallel_for(0, b * heads, std::max<int64_t>(1, 32768 / (t * d)), [&](int64_t begin, int64_t end) {
        std::vector<float> scores(t), query_row(d), acc(d);
        for (int64_t index = begin; index < end; index++) {
            const int64_t batch = index / heads, kv = index % heads / group;
            for (int64_t j = 0; j < d; j++) query_row[j] = load_value(q, kind, index * d + j);
            const char* k_rows = keys + (batch * key.stride(0) + kv * key.stride(1)) * element;
            const char* v_rows = values + (batch * value.stride(0) + kv * value.stride(1)) * element;
            const bool* seen = visible ? visible + batch * mask_batch_stride : nullptr;
            float largest = -std::numeric_limits<float>::infinity();
            for (int64_t i = 0; i < t; i++) {
                if (seen && !seen[i * mask_stride]) continue;
                scores[i] = dense_row_dot(k_rows + i * key.stride(2) * element, kind, query_row.data(), d) *
                            (float)scaling;
                largest = std::max(largest, scores[i]);
            }
            float total = 0.0f;  /* stays 0 where the mask hides every token: the output is then 0, as sdpa's */
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int64_t i = 0; i < t; i++) {
                if (seen && !seen[i * mask_stride]) continue;
                const float weight = std::exp(scores[i] - largest);
                total += weight;
                add_scaled_row(acc.data(), weight, v_rows + i * value.stride(2) * element, kind, d);
            }
            const float inverse = total == 0.0f ? 0.0f : 1.0f / total;
            for (int64_t j = 0; j < d; j++) store_value(o, kind, index * d + j, acc[j] * inverse);
        }
    });
    return out;
}

/* cache[:, :, -1] = token ([b, kv_heads, 1, d]) for a cache [b, kv_heads, t + 1, d]: a row copy per sequence and head
   where both have unit stride along d and one dtype (an aten copy_ of so few elements cost ~9 us, 2 per layer) */
static void write_token_slot(const at::Tensor& cache, const at::Tensor& token) {
    at::Tensor slot = cache.narrow(2, cache.size(2) - 1, 1);
    if (cache.scalar_type() != token.scalar_type() || cache.stride(3) != 1 || token.stride(3) != 1 ||
        slot.sizes() != token.sizes()) {
        slot.copy_(token);
        return;
    }
    const int64_t batch = cache.size(0), heads = cache.size(1), d = cache.size(3);
    const size_t row_bytes = (size_t)d * cache.element_size();
    char* dst = (char*)slot.data_ptr();
    const char* src = (const char*)token.data_ptr();
    for (int64_t i = 0; i < batch; i++)
        for (int64_t h = 0; h < heads; h++)
            std::memcpy(dst + (i * slot.stride(0) + h * slot.stride(1)) * cache.element_size(),
                        src + (i * token.stride(0) + h * token.stride(1)) * token.element_size(), row_bytes);
}

/* Tensors per layer in decode_layers' `blocks`: input norm weight, q/k/v stacked packed rows and their row scales,
   o_proj packed / row scale / column scale (None where it has none), post-attention norm weight, gate/up stacked
   packed rows and row scales, down_proj packed / row scale / column scale */
#define DECODE_BLOCK_TENSORS 12

/* A decode step through a stack of two-call decoder blocks with no Python between the layers: for each layer l, what
   the per-layer path computes in turn - attention_inputs, this token's key and value written into the cache's last
   slot (what transformers' DynamicLayer.update appends by concatenation), decode_attention over the cache,
   attention_output_and_mlp. hidden [b, 1, h]; blocks: DECODE_BLOCK_TENSORS per layer; keys[l], values[l]: layer l's
   cache [b, kv_heads, t + 1, d] with its last token slot reserved for this step (written here; t may differ between
   layers); cos, sin [b or 1, 1, d]; mask: transformers' boolean sdpa mask [b or 1, 1, 1, t + 1] or None; eps: the
   two norms' epsilons per layer. Returns the last block's hidden states [b, 1, h]. */
at::Tensor decode_layers(
    const at::Tensor& hidden, const c10::List<c10::optional<at::Tensor>>& blocks, at::TensorList keys,
    at::TensorList values, const at::Tensor& cos, const at::Tensor& sin, const c10::optional<at::Tensor>& mask,
    at::ArrayRef<double> eps, at::IntArrayRef qkv_outs, at::IntArrayRef gate_up_outs, int64_t head_dim,
    double scaling, int64_t activation_bits) {
    const int64_t layers = (int64_t)keys.size();
    TORCH_CHECK((int64_t)blocks.size() == DECODE_BLOCK_TENSORS * layers && (int64_t)values.size() == layers &&
                (int64_t)eps.size() == 2 * layers, "decode_layers takes ", DECODE_BLOCK_TENSORS, " block tensors, ",
                "keys, values and two norm epsilons per layer");
    TORCH_CHECK(hidden.dim() == 3 && hidden.size(1) == 1 && head_dim > 0, "decode_layers takes hidden [batch, 1, "
                "hidden] (one token per sequence)");
    const int64_t b = hidden.size(0);
    at::Tensor h = hidden;
    c10::optional<at::Tensor> t[DECODE_BLOCK_TENSORS];
    for (int64_t l = 0; l < layers; l++) {
        const int64_t first = DECODE_BLOCK_TENSORS * l;
        for (int i = 0; i < DECODE_BLOCK_TENSORS; i++) {
            t[i] = blocks.get(first + i);
            TORCH_CHECK(t[i].has_value() || i == 5 || i == 11, "decode_layers: block tensor ", i, " of layer ", l,
                        " is None (only the column scales, 5 and 11, may be)");
        }
        std::vector<at::Tensor> qkv = attention_inputs(h, *t[0], eps[2 * l], *t[1], *t[2], qkv_outs, cos, sin,
                                                       head_dim, activation_bits);
        /* [b, 1, kv_heads * d] -> [b, kv_heads, 1, d], as the per-layer path views them for the cache */
        const at::Tensor key = qkv[1].view({b, 1, -1, head_dim}).transpose(1, 2);
        const at::Tensor value = qkv[2].view({b, 1, -1, head_dim}).transpose(1, 2);
        TORCH_CHECK(keys[l].dim() == 4 && values[l].dim() == 4 && keys[l].size(2) >= 1 &&
                    keys[l].sizes() == values[l].sizes(), "decode_layers: layer ", l, "'s cache must hold ",
                    "[batch, kv_heads, tokens + 1, head_dim] keys and values, the last slot this step's");
        write_token_slot(keys[l], key);
        write_token_slot(values[l], value);
        const at::Tensor attention = decode_attention(qkv[0], keys[l], values[l], mask, scaling);
        h = attention_output_and_mlp(attention, h, *t[3], *t[4], t[5], *t[6], eps[2 * l + 1], *t[7], *t[8],
                                     gate_up_outs, *t[9], *t[10], t[11], activation_bits);
    }
    return h;
}

void set_allocation_limit(int64_t bytes) { allocation_limit.store(bytes); }

/* How many threads a parallel region of this library runs: at::parallel_for is inline (a `#pragma omp parallel` in
   torch's header), so a library built without -fopenmp runs every product on one thread, whatever torch's setting */
int64_t parallel_threads() {
    std::atomic<int64_t> threads{1};
    at::parallel_for(0, 1 << 16, 1, [&](int64_t, int64_t) {
        const int64_t mine = at::get_thread_num() + 1;
        int64_t seen = threads.load();
        while (mine > seen && !threads.compare_exchange_weak(seen, mine)) {}
    });
    return threads.load();
}

TORCH_LIBRARY(NAMESPACE, m) {
    m.def("ternary_mm(Tensor x, Tensor packed, Tensor row_scale, Tensor? col_scale, int activation_bits) -> Tensor");
    m.def("ternary_mm_fused(Tensor x, Tensor packed, Tensor row_scale, int[] outs, int activation_bits) -> Tensor[]");
    m.def("int8_mm(Tensor x, Tensor weight, Tensor row_scale) -> Tensor");
    m.def("dense_mm(Tensor x, Tensor weight) -> Tensor");
    m.def("attention_inputs(Tensor hidden, Tensor norm_weight, float eps, Tensor packed, Tensor row_scale, int[] outs, "
          "Tensor cos, Tensor sin, int head_dim, int activation_bits) -> Tensor[]");
    m.def("attention_output_and_mlp(Tensor attention, Tensor residual, Tensor o_packed, Tensor o_row_scale, "
          "Tensor? o_col_scale, Tensor norm_weight, float eps, Tensor gate_up_packed, Tensor gate_up_row_scale, "
          "int[] gate_up_outs, Tensor down_packed, Tensor down_row_scale, Tensor? down_col_scale, "
          "int activation_bits) -> Tensor");
    m.def("decode_attention(Tensor query, Tensor key, Tensor value, Tensor? mask, float scaling) -> Tensor");
    m.def("decode_layers(Tensor hidden, Tensor?[] blocks, Tensor(a!)[] keys, Tensor(b!)[] values, Tensor cos, "
          "Tensor sin, Tensor? mask, float[] eps, int[] qkv_outs, int[] gate_up_outs, int head_dim, float scaling, "
          "int activation_bits) -> Tensor");
    m.def("ternary_unpack(Tensor packed, int in_features) -> Tensor");
    m.def("set_allocation_limit(int bytes) -> ()");
    m.def("parallel_threads() -> int");
}

TORCH_LIBRARY_IMPL(NAMESPACE, CPU, m) {
    m.impl("ternary_mm", &ternary_mm);
    m.impl("ternary_mm_fused", &ternary_mm_fused);
    m.impl("int8_mm", &int8_mm);
    m.impl("dense_mm", &dense_mm);
    m.impl("attention_inputs", &attention_inputs);
    m.impl("attention_output_and_mlp", &attention_output_and_mlp);
    m.impl("decode_attention", &decode_attention);
    m.impl("decode_layers", &decode_layers);
    m.impl("ternary_unpack", &ternary_unpack);
}

TORCH_LIBRARY_IMPL(NAMESPACE, CompositeExplicitAutograd, m) {
    m.impl("set_allocation_limit", &set_allocation_limit);
    m.impl("parallel_threads", &parallel_threads);
}
"""
