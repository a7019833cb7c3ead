"""The 2-bit ternary kernels against a float64 reference: the C++ CPU kernel (decode GEMV, prefill tile, unpacked
GEMM) and the Triton kernel through its interpreter, for 1, 2, 3 and 6 scale shards along either dimension; the
2-bit layout round trip; and the fallback when no compiler is present."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from spectra_hf.modeling import TernaryLinear, ternary_kernels
from spectra_hf.modeling.ternary import default_inference_path
from spectra_hf.modeling.ternary_kernels import pack_2bit, unpack_2bit

SHARDS = (1, 2, 3, 6)
# relative to the output's largest magnitude: fp32 accumulation; bf16 output rounding (8 significant bits)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def random_ternary(out_features: int, in_features: int, shards: int, shard_dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    digits = torch.randint(-1, 2, (out_features, in_features), generator=generator, dtype=torch.int8)  # [out, in]
    scales = torch.rand(shards, generator=generator, dtype=torch.float32) * 0.05 + 0.01  # [shards]
    return digits, scales


def reference(x: torch.Tensor, digits: torch.Tensor, scales: torch.Tensor, shard_dim: int) -> torch.Tensor:
    """float64 X (g * T)^T, with each shard's scale spread over its contiguous block of rows / columns."""
    out_features, in_features = digits.shape
    sharded = (out_features, in_features)[shard_dim]
    per_index = torch.cat([torch.full((sharded // scales.numel(),), float(g), dtype=torch.float64) for g in scales])
    weight = digits.double() * (per_index[:, None] if shard_dim == 0 else per_index[None, :])
    return x.double() @ weight.t()


def test_2bit_layout_round_trip_and_size() -> None:
    for out_features, in_features in ((3, 5), (7, 128), (4, 300), (2, 256)):
        digits, _ = random_ternary(out_features, in_features, 1, 0, seed=in_features)
        packed = pack_2bit(digits)
        assert packed.dtype == torch.uint8
        assert packed.shape == (out_features, -(-in_features // 128) * 32)  # 2 bits per weight, rows padded to 128
        assert torch.equal(unpack_2bit(packed, in_features), digits)
    # the documented bit positions: weight j = 16 p + l of a block in bits 2p..2p+1 of little-endian 16-bit lane l
    digits = torch.zeros(1, 128, dtype=torch.int8)
    digits[0, 16 * 5 + 3] = -1  # p = 5, l = 3 -> lane 3, bits 10..11 = 0b11 -> byte 2 * 3 + 1, bits 2..3
    digits[0, 16 * 0 + 1] = 1  # p = 0, l = 1 -> lane 1, bits 0..1 = 0b01 -> byte 2
    digits[0, 16 * 7 + 15] = 1  # p = 7, l = 15 -> lane 15, bits 14..15 = 0b01 -> byte 31, bits 6..7
    packed = pack_2bit(digits)[0]
    expected = torch.zeros(32, dtype=torch.uint8)
    expected[7], expected[2], expected[31] = 0b1100, 0b01, 0b01000000
    assert torch.equal(packed, expected)


needs_cpu_kernel = pytest.mark.skipif(
    ternary_kernels.cpu_kernel() is None, reason=f"CPU kernel: {ternary_kernels.cpu_kernel_status()}"
)


@needs_cpu_kernel
@pytest.mark.parametrize("shards", SHARDS)
@pytest.mark.parametrize("shard_dim", (0, 1))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
def test_cpu_kernel_matches_the_float64_reference(shards: int, shard_dim: int, dtype: torch.dtype) -> None:
    out_features, in_features = 36, 300  # divisible by every shard count; in_features not a multiple of 128
    digits, scales = random_ternary(out_features, in_features, shards, shard_dim, seed=shards * 10 + shard_dim)
    layer = TernaryLinear.from_ternary(digits, scales, shard_dim=shard_dim, eps=1e-5)
    layer.prepare_inference("2bit", dtype)
    assert layer.weight_kernel.numel() == out_features * 384 // 4
    # decode (1 token), the prefill tile (5 = 4 + 1 tokens) and the unpacked-GEMM route (fp32: GEMM_MIN_TOKENS;
    # bf16 / fp16: GEMM_MIN_TOKENS_16BIT)
    gemm = ternary_kernels.GEMM_MIN_TOKENS if dtype == torch.float32 else ternary_kernels.GEMM_MIN_TOKENS_16BIT
    for tokens in (1, 5, ternary_kernels.GEMM_MIN_TOKENS, gemm):
        x = torch.randn(tokens, in_features, generator=torch.Generator().manual_seed(tokens)).to(dtype)  # [tokens, in]
        with torch.no_grad():
            y = layer(x)
        assert y.dtype == dtype and y.shape == (tokens, out_features)
        expected = reference(x, digits, scales, shard_dim)
        torch.testing.assert_close(y.double(), expected, rtol=0, atol=TOLERANCE[dtype] * expected.abs().max().item())


@needs_cpu_kernel
@pytest.mark.parametrize("activation_bits, tokens", ((16, 150), (8, 300)))
def test_prefill_token_panels_compute_each_token_as_alone(activation_bits: int, tokens: int) -> None:
    """Prefill runs the tile over panels of tokens whose quantized activations fit in L2 (128 fp16 tokens of 2048
    int16 codes, 256 of int8 codes): tokens across a panel boundary get exactly the products they get in a short
    call, and stay within tolerance of float64. (fp16: on CPUs with AVX-512 BF16, bf16 prefill takes the bf16 route,
    which has no token panels; fp16 takes the tile everywhere.)"""
    digits, scales = random_ternary(40, 2048, 2, 1, seed=5)
    layer = TernaryLinear.from_ternary(digits, scales, shard_dim=1, eps=1e-5)
    layer.prepare_inference("2bit", torch.float16)
    kernel = ternary_kernels.cpu_kernel()
    x = torch.randn(tokens, 2048, generator=torch.Generator().manual_seed(2)).to(torch.float16)  # [tokens, in]
    operands = (layer.weight_kernel, layer.kernel_scale, layer.input_scale, activation_bits)
    together = kernel.mm(x, *operands)
    # (in calls of 2 tokens: a single token takes the decode GEMV, whose final sum is reduced in another order)
    alone = torch.cat([kernel.mm(x[i : i + 2], *operands) for i in range(0, tokens, 2)])
    assert torch.equal(together, alone)
    if activation_bits == 16:
        expected = reference(x, digits, scales, 1)
        atol = TOLERANCE[torch.float16] * expected.abs().max().item()
        torch.testing.assert_close(together.double(), expected, rtol=0, atol=atol)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
def test_cpu_kernel_is_as_close_to_float64_as_torch_dense_matmul_in_the_same_dtype(dtype: torch.dtype) -> None:
    """The kernel quantizes activations to int16 per 128-column block (two passes for fp32). Activations shaped
    like a trained LLM's (a few outlier features 50-100x the rest, which set their blocks' scales) must still
    come out as close to the float64 product as torch's own dense matmul of g*T in that dtype: int8 activations
    (llama.cpp's route) would be ~20x further off at these shapes."""
    generator = torch.Generator().manual_seed(7)
    for (out_features, in_features), shard_dim in (((512, 1792), 0), ((1792, 5120), 1), ((768, 2048), 0)):
        digits, scales = random_ternary(out_features, in_features, 2, shard_dim, seed=in_features)
        expected_weight = reference(torch.eye(in_features, dtype=torch.float64), digits, scales, shard_dim).t()
        layer = TernaryLinear.from_ternary(digits, scales, shard_dim=shard_dim, eps=1e-5)
        layer.prepare_inference("2bit", dtype)
        dense = torch.nn.Linear(in_features, out_features, bias=False, dtype=dtype)
        with torch.no_grad():
            dense.weight.copy_(expected_weight)  # g*T rounded to `dtype`: what a float model of that dtype holds
        for tokens in (1, 7):
            x = torch.randn(tokens, in_features, generator=generator)  # [tokens, in]
            x[:, 5] *= 60
            x[:, in_features // 2] *= -100
            x = x.to(dtype)
            expected = x.double() @ expected_weight.t()
            with torch.no_grad():
                kernel_error = (layer(x).double() - expected).abs().max().item()
                dense_error = (dense(x).double() - expected).abs().max().item()
            assert kernel_error <= 1.25 * dense_error, (out_features, in_features, tokens, kernel_error, dense_error)


@needs_cpu_kernel
def test_cpu_kernel_lets_nan_and_infinity_through() -> None:
    """A non-finite activation must not vanish into a block scale: the outputs it reaches are not finite."""
    digits, scales = random_ternary(16, 256, 1, 0, seed=5)
    digits[:, 3] = 1  # every output row reads column 3
    layer = TernaryLinear.from_ternary(digits, scales, shard_dim=0, eps=1e-5)
    for dtype in (torch.float32, torch.bfloat16):
        layer.prepare_inference("2bit", dtype)
        # (2 tokens: the int16 tile; 5: with AVX-512 BF16, the bf16 route for bf16)
        for bad, tokens in itertools.product((float("nan"), float("inf")), (2, 5)):
            x = torch.ones(tokens, 256, dtype=dtype)  # [tokens, in]
            x[0, 3] = bad
            with torch.no_grad():
                y = layer(x)
            assert not torch.isfinite(y[0]).any(), (dtype, bad)
            assert torch.isfinite(y[1:]).all(), (dtype, bad)  # the other tokens are untouched


@needs_cpu_kernel
def test_cpu_kernel_takes_batched_and_strided_inputs() -> None:
    digits, scales = random_ternary(8, 256, 2, 1, seed=3)
    layer = TernaryLinear.from_ternary(digits, scales, shard_dim=1, eps=1e-5)
    layer.prepare_inference("2bit", torch.float32)
    x = torch.randn(2, 3, 512)[..., ::2]  # [batch, seq, in] with stride 2 along in
    with torch.no_grad():
        y = layer(x)
    expected = reference(x.reshape(-1, 256), digits, scales, 1).reshape(2, 3, 8)
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("shards", SHARDS)
def test_triton_kernel_through_the_interpreter(shards: int, monkeypatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for shard_dim in (0, 1):
        out_features, in_features = 42, 150  # not multiples of the kernel's 32-row / 128-column tiles
        digits, scales = random_ternary(out_features, in_features, shards, shard_dim, seed=shards + 100 * shard_dim)
        layer = TernaryLinear.from_ternary(digits, scales, shard_dim=shard_dim, eps=1e-5)
        layer.prepare_inference("2bit", torch.float32)
        for tokens, dtype in ((1, torch.float32), (3, torch.float32), (2, torch.bfloat16)):
            x = torch.randn(tokens, in_features, generator=torch.Generator().manual_seed(tokens)).to(dtype)
            with torch.no_grad():
                y = layer(x)
            expected = reference(x, digits, scales, shard_dim)
            torch.testing.assert_close(
                y.double(), expected, rtol=0, atol=TOLERANCE[dtype] * expected.abs().max().item()
            )


def test_without_a_compiler_auto_falls_back_to_int4_and_says_why(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(ternary_kernels.CACHE_ENV, str(tmp_path / "cache"))
    logger = logging.getLogger("spectra_hf.modeling.ternary_kernels")
    logger.addHandler(caplog.handler)
    try:
        assert ternary_kernels.cpu_kernel() is None
    finally:
        logger.removeHandler(caplog.handler)
    assert "no-such-compiler" in ternary_kernels.cpu_kernel_status()
    assert any("int4" in record.getMessage() for record in caplog.records)
    assert default_inference_path(torch.device("cpu"), 256) == "int4"
    assert default_inference_path(torch.device("cpu"), 40) == "int8"
    digits, scales = random_ternary(16, 256, 1, 0, seed=0)
    layer = TernaryLinear.from_ternary(digits, scales, shard_dim=0, eps=1e-5)
    with pytest.raises(ValueError, match="2bit path cannot run here"):
        layer.prepare_inference("2bit", torch.float32)
    with torch.no_grad():
        y = layer(torch.ones(1, 256))  # the first forward plans the fallback path
    assert layer.inference_path == "int4"
    expected = reference(torch.ones(1, 256), digits, scales, 0)
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=1e-2 * expected.abs().max().item())


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
def test_int8_head_kernel_matches_the_float64_reference(dtype: torch.dtype) -> None:
    """The optional int8 LM head on CPU runs the same C++ file (int16 activations): its product equals the float64
    product of its own int8 codes and float32 row scales within the dtype's tolerance, and is no further from it
    than torch's int8 weight-only kernel (the fallback, which computes in bfloat16)."""
    from spectra_hf.modeling.int8_embeddings import Int8Linear

    generator = torch.Generator().manual_seed(11)
    for out_features, in_features in ((1000, 768), (37, 272)):  # 272 = 2 blocks of 128 + 16 columns
        linear = torch.nn.Linear(in_features, out_features, bias=False)
        with torch.no_grad():
            linear.weight.normal_(0, 0.02, generator=generator)
        head = Int8Linear(linear)
        weight = head.weight.double() * head.scale.double()[:, None]  # what the head holds, exactly
        x = torch.randn(3, in_features, generator=generator)
        x[:, 2] *= 50  # an outlier feature
        x = x.to(dtype)
        expected = x.double() @ weight.t()
        with torch.no_grad():
            y = head(x)
            fallback = torch._weight_int8pack_mm(x.to(torch.bfloat16), head.weight, head.scale.to(torch.bfloat16))
        assert y.dtype == dtype and y.shape == (3, out_features)
        atol = TOLERANCE[dtype] * expected.abs().max().item()
        torch.testing.assert_close(y.double(), expected, rtol=0, atol=atol)
        assert (y.double() - expected).abs().max() <= (fallback.double() - expected).abs().max()


# ----------------------------------------------------------------------------------------- instruction-set variants

AVX512_FLAGS = frozenset(["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"])


def test_a_variant_the_cpu_lacks_is_never_chosen() -> None:
    choose, flags = ternary_kernels.choose_variant, ternary_kernels.cpu_flags()
    assert choose(frozenset()) == "portable"
    assert choose(frozenset({"avx2", "fma", "f16c"})) == "avx2"
    assert choose(frozenset({"avx2", "fma", "f16c", "avx_vnni"})) == "avxvnni"
    assert choose(AVX512_FLAGS) == "avx512bw"
    assert choose(AVX512_FLAGS | {"avx512_vnni"}) == "avx512vnni"
    assert choose(AVX512_FLAGS | {"avx512_vnni", "avx512_bf16", "gfni"}) == "avx512bf16"
    assert choose(AVX512_FLAGS | {"avx512_bf16", "gfni"}) == "avx512bw"  # (the bf16 variant is built with VNNI too)
    assert choose(AVX512_FLAGS | {"avx512_vnni", "avx512_bf16"}) == "avx512vnni"  # (and GFNI: Cooper Lake has none)
    with pytest.raises(ValueError, match="lacks avx512bw"):
        choose(frozenset({"avx2", "fma", "f16c"}), "avx512bw")
    with pytest.raises(ValueError, match="not a kernel variant"):
        choose(flags, "sse9")
    # on this machine: the chosen variant's every required flag is in /proc/cpuinfo
    chosen = choose(flags)
    assert chosen in ternary_kernels.supported_variants(flags)
    kernel = ternary_kernels.cpu_kernel()
    if kernel is not None:
        assert kernel.variant == chosen and chosen in ternary_kernels.cpu_kernel_status()


def runnable_variants() -> list:
    variants = ternary_kernels.supported_variants(ternary_kernels.cpu_flags())
    return [pytest.param(v, marks=pytest.mark.slow) if v not in ("avx2",) else v for v in variants]


@pytest.mark.parametrize("variant", runnable_variants())
def test_every_variant_the_cpu_has_matches_the_float64_reference(variant: str) -> None:
    """Each variant this CPU runs (built if needed: about a minute each on 2 busy cores) against float64, for 1, 2, 3
    and 6 scale shards along either dimension, decode and tile token counts, fp32 and bf16, and the fused call."""
    kernel = ternary_kernels.load_cpu_library(
        variant, compiler="c++", cache_dir=ternary_kernels.kernel_cache_dir()
    )
    for shards in SHARDS:
        for shard_dim in (0, 1):
            # (42 rows: chunks of 16, 16 and 10, so the decode GEMV's four-row tile and its one-row tail both run)
            digits, scales = random_ternary(42, 300, shards, shard_dim, seed=shards * 10 + shard_dim)
            layer = TernaryLinear.from_ternary(digits, scales, shard_dim=shard_dim, eps=1e-5)
            layer.prepare_inference("2bit", torch.float32)
            for tokens, dtype in ((1, torch.float32), (5, torch.float32), (1, torch.bfloat16), (3, torch.bfloat16),
                                  (6, torch.bfloat16), (50, torch.float32)):
                x = torch.randn(tokens, 300, generator=torch.Generator().manual_seed(tokens)).to(dtype)
                y = kernel.mm(x, layer.weight_kernel, layer.kernel_scale, layer.input_scale, 16)
                expected = reference(x, digits, scales, shard_dim)
                atol = TOLERANCE[dtype] * expected.abs().max().item()
                torch.testing.assert_close(y.double(), expected, rtol=0, atol=atol)
                if shard_dim == 0:
                    parts = kernel.mm_fused(x, layer.weight_kernel, layer.kernel_scale, [22, 20], 16)
                    torch.testing.assert_close(torch.cat(parts, -1).double(), expected, rtol=0, atol=atol)
                # the int8-activation route of this variant, within its documented bound
                y8 = kernel.mm(x, layer.weight_kernel, layer.kernel_scale, layer.input_scale, 8)
                bound = int8_activation_bound(x, digits, scales, shard_dim)
                rounding = expected.abs() * (2.0**-8 if dtype == torch.bfloat16 else 0.0)
                assert ((y8.double() - expected).abs() <= bound + rounding + 1e-5 * expected.abs().max()).all()
    assert_dense_mm_like_torch(kernel)
    assert_decode_attention_like_sdpa(kernel)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_decode_gemv_keeps_its_int16_codes_exact(dtype: torch.dtype) -> None:
    """One token of 16-bit activations (a decode step) on the kernel in force: every output within the int16 codes'
    documented bound (the int8 bound / 257: codes up to 32639, which the AVX-512 VNNI variants multiply as two signed
    bytes) plus half an ulp of the output's dtype and fp32 summation. For 1, 2, 3 and 5 rows and 42 (the four-row
    GEMV's tails), 3 blocks of 128 (an odd last block), codes at both ends of their range (a block's largest |x| at
    + and -), and 1, 2, 3 and 6 shards along either dimension. The int8 route misses this bound: the check can fail."""
    kernel = ternary_kernels.cpu_kernel()
    half_ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    x = torch.randn(1, 384, generator=torch.Generator().manual_seed(3)) * 0.5  # [1, 384]
    x[0, 3], x[0, 77], x[0, 128 + 5] = 8.0, -8.0, -6.0  # codes +32639 and -32639; -32639 alone in block 1
    x[0, 256:] *= 1e-3  # block 2: small values, full-range codes all the same
    x = x.to(dtype)
    cases = [(rows, 1, 0) for rows in (1, 2, 3, 5)] + [(42, shards, dim) for shards in SHARDS for dim in (0, 1)]
    int8_misses = 0
    for rows, shards, shard_dim in cases:
        digits, scales = random_ternary(rows, 384, shards, shard_dim, seed=rows * 10 + shards + shard_dim)
        layer = TernaryLinear.from_ternary(digits, scales, shard_dim=shard_dim, eps=1e-5)
        layer.prepare_inference("2bit", dtype)
        operands = (layer.weight_kernel, layer.kernel_scale, layer.input_scale)
        expected = reference(x, digits, scales, shard_dim)  # [1, rows]
        bound = int8_activation_bound(x, digits, scales, shard_dim) / 257
        bound += expected.abs() * half_ulp + 1e-6 * expected.abs().max()
        error = (kernel.mm(x, *operands, 16).double() - expected).abs()
        assert (error <= bound).all(), (rows, shards, shard_dim, (error - bound).max().item())
        int8_misses += int(((kernel.mm(x, *operands, 8).double() - expected).abs() > bound).sum())
    assert int8_misses > 0


def bf16_variant_or_skip() -> ternary_kernels.CpuKernel:
    if "avx512bf16" not in ternary_kernels.supported_variants(ternary_kernels.cpu_flags()):
        pytest.skip("this CPU lacks AVX-512 BF16: the bf16 route is only compiled here (variants_this_cpu_lacks)")
    return ternary_kernels.load_cpu_library("avx512bf16", compiler="c++", cache_dir=ternary_kernels.kernel_cache_dir())


@pytest.mark.parametrize("shard_dim", (0, 1))
def test_bf16_route_rounds_the_exact_product_once(shard_dim: int) -> None:
    """The avx512bf16 variant multiplies bf16 activations of BF16_GEMM_MIN_TOKENS tokens or more unquantized: every
    output is the float64 product rounded once to bf16, within half a bf16 ulp (2^-8 of its magnitude) and fp32
    summation error. For 1, 2, 3 and 6 scale shards (column shards: a segment each), 4 to 7 and 64 tokens (the
    4-token tile and its tails), 42 rows (16-row panels, 4-row tiles, a 2-row tail), 300 columns (a 12-column tail),
    rows read with a stride, and the fused call; int8 activations from BF16_GEMM_MIN_TOKENS_INT8 tokens on take this
    route too. The int16 route (3 tokens here) misses this bound: the check can fail."""
    kernel = bf16_variant_or_skip()
    int16_misses = 0
    for shards in SHARDS:
        digits, scales = random_ternary(42, 300, shards, shard_dim, seed=shards * 10 + shard_dim)
        layer = TernaryLinear.from_ternary(digits, scales, shard_dim=shard_dim, eps=1e-5)
        layer.prepare_inference("2bit", torch.bfloat16)
        operands = (layer.weight_kernel, layer.kernel_scale, layer.input_scale, 16)
        for tokens in (3, 4, 5, 6, 7, 64):
            wide = torch.randn(tokens, 400, generator=torch.Generator().manual_seed(tokens)).to(torch.bfloat16)
            x = wide[:, :300]  # [tokens, 300], rows 400 elements apart
            expected = reference(x, digits, scales, shard_dim)  # [tokens, 42]
            bound = expected.abs() * 2.0**-8 + 1e-6 * expected.abs().max()
            error = (kernel.mm(x, *operands).double() - expected).abs()
            if tokens < ternary_kernels.BF16_GEMM_MIN_TOKENS:
                int16_misses += int((error > bound).sum())
                continue
            assert (error <= bound).all(), (shards, shard_dim, tokens, (error - bound).max().item())
            if tokens >= ternary_kernels.BF16_GEMM_MIN_TOKENS_INT8:  # int8 activations asked for: this route too
                assert torch.equal(kernel.mm(x, *operands[:3], 8), kernel.mm(x, *operands))
            if shard_dim == 0:
                parts = kernel.mm_fused(x, layer.weight_kernel, layer.kernel_scale, [22, 20], 16)
                assert torch.equal(torch.cat(parts, -1), kernel.mm(x, *operands))
    assert int16_misses > 0


def assert_decode_attention_like_sdpa(kernel: ternary_kernels.CpuKernel) -> None:
    """`decode_attention` (one new token per sequence over the KV cache, no mask) is as close to the float64
    softmax(q k^T / sqrt(d)) v as torch's sdpa in the same dtype: grouped kv heads, 2 sequences, head widths with and
    without an 8-element tail, 1 to 300 cached tokens, keys read through a longer buffer (a static cache's slice),
    without a mask and with boolean ones (per sequence, and one for all)."""
    generator = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for batch, heads, kv_heads, tokens, head_dim in ((1, 4, 4, 1, 64), (2, 8, 2, 7, 36), (2, 6, 3, 300, 128)):
            query = torch.randn(batch, 1, heads * head_dim, generator=generator).to(dtype)  # [batch, 1, heads * d]
            buffers = torch.randn(2, batch, kv_heads, tokens + 5, head_dim, generator=generator).to(dtype)
            key, value = buffers[0, :, :, :tokens], buffers[1, :, :, :tokens]  # [batch, kv heads, tokens, d]
            q = query.view(batch, 1, heads, head_dim).transpose(1, 2)  # [batch, heads, 1, d]
            k, v = (t.repeat_interleave(heads // kv_heads, 1) for t in (key, value))  # [batch, heads, tokens, d]
            # no mask; transformers' boolean mask [batch, 1, 1, tokens] hiding a random part (never the last token)
            hidden = torch.rand(batch, 1, 1, tokens, generator=generator) < 0.3
            hidden[..., -1] = False
            for mask in (None, ~hidden, ~hidden[:1]):
                ours = kernel.decode_attention(query, key, value, mask, head_dim**-0.5)
                assert ours.shape == query.shape and ours.dtype == dtype
                scores = q.double() @ k.double().transpose(-1, -2) * head_dim**-0.5  # [batch, heads, 1, tokens]
                if mask is not None:
                    scores = scores.masked_fill(~mask, float("-inf"))
                expected = (torch.softmax(scores, -1) @ v.double()).transpose(1, 2).reshape(query.shape)
                sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                ours_error = (ours.double() - expected).abs().max().item()
                sdpa_error = (sdpa.double().transpose(1, 2).reshape(query.shape) - expected).abs().max().item()
                assert ours_error <= 1.25 * sdpa_error + 1e-6, (dtype, batch, heads, kv_heads, tokens, head_dim)
    query, key = torch.randn(1, 1, 64), torch.randn(1, 1, 3, 64)
    nothing = torch.zeros(1, 1, 1, 3, dtype=torch.bool)  # a mask hiding every token: zeros, as sdpa returns
    sdpa = torch.nn.functional.scaled_dot_product_attention(query.view(1, 1, 1, 64), key, key, attn_mask=nothing)
    assert torch.equal(kernel.decode_attention(query, key, key, nothing, 0.1), sdpa.view(1, 1, 64))
    with pytest.raises(RuntimeError, match=r"query \[batch, 1, heads \* head_dim\]"):
        kernel.decode_attention(torch.randn(1, 2, 64), torch.randn(1, 1, 3, 64), torch.randn(1, 1, 3, 64), None, 0.1)
    with pytest.raises(RuntimeError, match=r"mask must be a boolean \[batch or 1, 1, 1, tokens\]"):
        kernel.decode_attention(torch.randn(1, 1, 64), *torch.randn(2, 1, 1, 3, 64), torch.ones(1, 1, 1, 3), 0.1)


def assert_dense_mm_like_torch(kernel: ternary_kernels.CpuKernel) -> None:
    """`dense_mm` (the decode LM head) is as close to the float64 product as torch's own matmul in the same dtype,
    for widths with and without a 32-column tail and 1 to 16 tokens."""
    generator = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for out_features, in_features in ((1000, 300), (333, 512)):
            weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
            for tokens in (1, 3, 16):
                x = torch.randn(tokens, 1, in_features, generator=generator).to(dtype)  # [batch, seq, in]
                expected = x.double() @ weight.double().t()
                ours = kernel.dense_mm(x, weight)
                assert ours.shape == (tokens, 1, out_features) and ours.dtype == dtype
                ours_error = (ours.double() - expected).abs().max().item()
                torch_error = (torch.nn.functional.linear(x, weight).double() - expected).abs().max().item()
                assert ours_error <= 1.25 * torch_error + 1e-6, (dtype, out_features, in_features, tokens)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["avx512bw", "avx512vnni", "avx512bf16", "avxvnni"])
def test_variants_this_cpu_lacks_still_compile(variant: str, tmp_path) -> None:
    """Compile-only: the AVX-512 / AVX-VNNI code paths build (the compiler takes their flags) though this CPU may not
    run them; nothing is loaded."""
    import subprocess

    probe = subprocess.run(
        ["c++", "-mavx512vnni", "-mavx512bf16", "-mavxvnni", "-x", "c++", "-E", "-", "-o", "/dev/null"],
        input="", capture_output=True, text=True,
    )
    if probe.returncode:
        pytest.skip("the compiler does not take the AVX-512 VNNI / BF16 / AVX-VNNI flags")
    path, seconds = ternary_kernels.build_cpu_library(variant, compiler="c++", cache_dir=tmp_path)
    assert path.exists() and seconds is not None and variant in path.name


def int8_activation_bound(x: torch.Tensor, digits: torch.Tensor, scales: torch.Tensor, shard_dim: int) -> torch.Tensor:
    """The int8 route's documented error bound per output, float64 [tokens, out], computed from T and x here:
    |row_scale_r| * sum over 128-column blocks b of nnz(T_r in b) * max_{j in b} |x_j col_scale_j| / 254."""
    out_features, in_features = digits.shape
    sharded = (out_features, in_features)[shard_dim]
    per_index = torch.cat([torch.full((sharded // scales.numel(),), float(g), dtype=torch.float64) for g in scales])
    row = per_index if shard_dim == 0 else torch.ones(out_features, dtype=torch.float64)
    col = per_index if shard_dim == 1 else torch.ones(in_features, dtype=torch.float64)
    scaled = (x.double() * col).abs()  # [tokens, in]
    bound = torch.zeros(x.shape[0], out_features, dtype=torch.float64)
    for start in range(0, in_features, 128):
        block_max = scaled[:, start : start + 128].amax(dim=1)  # [tokens]
        nonzero = (digits[:, start : start + 128] != 0).sum(dim=1).double()  # [out]
        bound += block_max[:, None] * nonzero[None, :] / 254
    return bound * row


@needs_cpu_kernel
@pytest.mark.parametrize("shards", SHARDS)
@pytest.mark.parametrize("shard_dim", (0, 1))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_int8_activations_stay_within_their_documented_bound(shards: int, shard_dim: int, dtype: torch.dtype) -> None:
    """activation_bits=8 against float64: every output within the bound of ternary_kernels' docstring (plus fp32
    accumulation and the output dtype's rounding), for the decode GEMV, the tile and a fp32 prefill that the exact
    route would send through the GEMM; and really int8: some errors exceed what the int16 route allows."""
    out_features, in_features = 36, 300
    digits, scales = random_ternary(out_features, in_features, shards, shard_dim, seed=shards * 10 + shard_dim + 1)
    layer = TernaryLinear.from_ternary(digits, scales, shard_dim=shard_dim, eps=1e-5)
    layer.prepare_inference("2bit", dtype)
    layer.set_int8_activations(True)
    exceeds_int16 = False
    for tokens in (1, 5, ternary_kernels.GEMM_MIN_TOKENS + 2):
        x = torch.randn(tokens, in_features, generator=torch.Generator().manual_seed(tokens)).to(dtype)
        x[0, 7] = 40.0  # an outlier feature: its block's scale coarsens every other activation of the block
        with torch.no_grad():
            y = layer(x)
        assert y.dtype == dtype and y.shape == (tokens, out_features)
        expected = reference(x, digits, scales, shard_dim)
        bound = int8_activation_bound(x, digits, scales, shard_dim)
        rounding = expected.abs() * (2.0**-8 if dtype == torch.bfloat16 else 0.0)
        error = (y.double() - expected).abs()
        assert (error <= bound + rounding + 1e-5 * expected.abs().max()).all()
        exceeds_int16 |= bool((error > bound / 258 + rounding + 1e-5 * expected.abs().max()).any())
    assert exceeds_int16
    layer.set_int8_activations(False)
    x = torch.randn(3, in_features, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.no_grad():
        expected = reference(x, digits, scales, shard_dim)
        torch.testing.assert_close(layer(x).double(), expected, rtol=0, atol=TOLERANCE[dtype] * expected.abs().max())


def test_int8_activations_are_refused_off_the_cpu_2bit_path() -> None:
    digits, scales = random_ternary(8, 128, 1, 0, seed=0)
    layer = TernaryLinear.from_ternary(digits, scales, shard_dim=0, eps=1e-5)
    layer.prepare_inference("int8", torch.float32)
    with pytest.raises(ValueError, match=r"option of the CPU 2bit path.*'int8'"):
        layer.set_int8_activations(True)
    assert layer.activation_bits == 16


@needs_cpu_kernel
def test_the_operators_run_on_torchs_intra_op_threads() -> None:
    """The library's parallel regions use torch's thread count (a build without OpenMP runs them on one thread)."""
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: nothing to run in parallel")
    kernel = ternary_kernels.cpu_kernel()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert kernel.ops.parallel_threads() == 2
        torch.set_num_threads(1)
        assert kernel.ops.parallel_threads() == 1
    finally:
        torch.set_num_threads(before)
