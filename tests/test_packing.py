"""5-trits-per-byte packing: the documented digit order, lossless round trips, size, and corrupt input."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from spectra_hf import TriLMForCausalLM
from spectra_hf.modeling.packing import pack_ternary, packed_size, unpack_ternary
from spectra_hf.suite import config_for


def test_digit_order_is_little_endian_base_3_with_zero_padding() -> None:
    # byte = d0 + 3 d1 + 9 d2 + 27 d3 + 81 d4 with d = t + 1; a short last group is padded with t = 0 (d = 1).
    digits = torch.tensor([-1, 0, 1, 1, -1, 1, -1], dtype=torch.int8)
    expected = [0 + 3 * 1 + 9 * 2 + 27 * 2 + 81 * 0, 2 + 3 * 0 + 9 * 1 + 27 * 1 + 81 * 1]
    assert pack_ternary(digits).tolist() == expected


@pytest.mark.parametrize("shape", [(1,), (7, 3), (64, 96), (5, 5, 5)])
def test_round_trip_is_lossless(shape) -> None:
    digits = torch.randint(-1, 2, shape, dtype=torch.int8)
    packed = pack_ternary(digits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(digits.numel()) == -(-digits.numel() // 5)
    assert torch.equal(unpack_ternary(packed, shape), digits)


def test_corrupt_packed_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="<= 242"):
        unpack_ternary(torch.tensor([243], dtype=torch.uint8), (5,))
    with pytest.raises(ValueError, match=r"does not match its config\.json"):
        unpack_ternary(torch.zeros(3, dtype=torch.uint8), (4, 5))


@pytest.mark.parametrize("name", ["TriLM_1.1B", "TriLM_3.9B"])
def test_packed_checkpoint_stores_1_6_bits_per_ternary_weight(name: str, tmp_path) -> None:
    model = TriLMForCausalLM(config_for(name, tiny=True)).eval()
    model.save_pretrained(tmp_path, weight_format="packed")
    shards = model.config.pretraining_model_parallel
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        names = set(handle.keys())
        for module_name, module in model.named_modules():
            if not hasattr(module, "shard_dim"):
                continue
            assert f"{module_name}.weight" not in names
            packed = handle.get_tensor(f"{module_name}.weight_packed")
            scale = handle.get_tensor(f"{module_name}.weight_scale")
            numel = module.in_features * module.out_features
            assert packed.dtype == torch.uint8 and scale.dtype == torch.float32 and scale.shape == (shards,)
            bits = 8 * (packed.numel() + 4 * scale.numel()) / numel
            # 1.6 bits, plus at most 4 padding digits and the float32 scales
            assert bits <= 1.6 + 8 * (1 + 4 * shards) / numel
            digits, scales = module.ternary_weight()
            assert torch.equal(unpack_ternary(packed, digits.shape), digits)
            assert torch.equal(scale, scales)
