"""The one ternary-statistics routine (modeling/ternary_stats.py) and its three users: the model, the trainer's logs
and `spectra-hf info`, against counts made by hand (collections.Counter over the digits as Python ints)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from spectra_hf import TernaryLinear, TriLMForCausalLM
from spectra_hf.checkpoints.info import describe_checkpoint
from spectra_hf.modeling.ternary_stats import TernaryCounts
from spectra_hf.suite import config_for
from spectra_hf.training.ternary_stats import TernaryStatsTracker


def test_counts_and_scales_of_known_digits() -> None:
    digits = torch.tensor([[-1, 0, 0, 1], [1, 1, 0, -1], [0, 0, 0, 0]], dtype=torch.int8)  # [3, 4]: 2 / 7 / 3
    counts = TernaryCounts()
    counts.add(digits, torch.tensor([0.5, 0.25]))
    counts.add(torch.ones(2, 3, dtype=torch.int8), torch.tensor([2.0]))  # six more +1
    assert (counts.minus, counts.zero, counts.plus, counts.total) == (2, 7, 9, 18)
    assert counts.fractions() == {"zero_fraction": 7 / 18, "plus_fraction": 9 / 18, "minus_fraction": 2 / 18}
    assert (counts.scale_min, counts.scale_max, counts.scale_mean) == (0.25, 2.0, 2.75 / 3)
    assert all(math.isnan(v) for v in TernaryCounts().fractions().values()) and math.isnan(TernaryCounts().scale_mean)


def _hand_counts(model: torch.nn.Module) -> tuple[dict[str, Counter], list[float]]:
    per_layer, scales = {}, []
    for name, module in model.named_modules():
        if isinstance(module, TernaryLinear):
            digits, layer_scales = module.ternary_weight()
            per_layer[name] = Counter(int(d) for d in digits.flatten().tolist())
            scales += layer_scales.tolist()
    return per_layer, scales


def test_model_trainer_and_info_agree_with_counts_by_hand(tmp_path) -> None:
    torch.manual_seed(0)
    model = TriLMForCausalLM(config_for("TriLM_2.4B", tiny=True)).eval()  # 3 scale shards
    per_layer, scales = _hand_counts(model)
    total = sum(per_layer.values(), Counter())
    numel = sum(total.values())

    stats = model.ternary_stats()
    assert stats.keys() == per_layer.keys()
    for name, layer in per_layer.items():
        n = sum(layer.values())
        assert stats[name]["zero_fraction"] == layer[0] / n
        assert stats[name]["plus_fraction"] == layer[1] / n and stats[name]["minus_fraction"] == layer[-1] / n

    logs = TernaryStatsTracker().stats(model)
    assert logs["ternary/zero_fraction"] == total[0] / numel
    assert logs["ternary/scale_mean"] == pytest.approx(sum(scales) / len(scales), rel=1e-12)

    model.save_pretrained(tmp_path / "latent")
    info = describe_checkpoint(tmp_path / "latent")
    assert (info["zero_fraction"], info["plus_fraction"], info["minus_fraction"]) == (
        total[0] / numel, total[1] / numel, total[-1] / numel
    )
    assert (info["scale_min"], info["scale_max"]) == (pytest.approx(min(scales)), pytest.approx(max(scales)))
