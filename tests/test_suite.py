"""The suite registry against the paper: 54 models, parameter counts from the architecture, sizes in bits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from spectra_hf.errors import SpectraError
from spectra_hf.modeling.checkpoint_checks import linear_shapes
from spectra_hf.suite import (
    FLOAT_BITS,
    QUANT_EFFECTIVE_BITS,
    SIZES,
    TERNARY_BITS,
    all_models,
    config_for,
    get_model,
    linear_params,
    size_bits,
)

# The paper's architecture table (shared/SPECTRA.md), typed in again here as the reference.
PAPER_TABLE = {
    "99M": (512, 1280, 8, 16, 1), "190M": (768, 2048, 12, 16, 1), "390M": (1024, 2560, 16, 24, 1),
    "560M": (1280, 3072, 20, 24, 1), "830M": (1536, 4096, 24, 24, 1), "1.1B": (1792, 5120, 28, 24, 2),
    "1.5B": (2048, 6144, 32, 24, 2), "2.4B": (2304, 7680, 36, 30, 3), "3.9B": (3072, 9216, 24, 30, 6),
}


def test_54_models_with_unique_hub_names() -> None:
    models = all_models()
    assert len(models) == 54 and len({m.name for m in models}) == 54
    assert sum(m.family == "trilm" for m in models) == 9 and sum(m.family == "quantlm" for m in models) == 36
    assert {"TriLM_99M", "FloatLM_1.1B", "QuantLM_3.9B_4bit", "QuantLM_2.4B_6bit"} <= {m.name for m in models}


@pytest.mark.parametrize("size", list(PAPER_TABLE))
def test_architecture_and_parameter_count_follow_the_paper(size: str) -> None:
    hidden, glu, heads, layers, mp = PAPER_TABLE[size]
    spec = SIZES[size]
    assert (spec.hidden_size, spec.intermediate_size, spec.num_attention_heads, spec.num_hidden_layers,
            spec.model_parallel) == (hidden, glu, heads, layers, mp)
    assert spec.head_dim == (128 if size == "3.9B" else 64)
    # Count parameters of the real model, built on the meta device (no memory), for both families.
    for family in ("TriLM", "FloatLM"):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config_for(f"{family}_{size}"))
        assert sum(p.numel() for p in model.parameters()) == get_model(f"{family}_{size}").params
    nominal = float(size[:-1]) * (1e6 if size.endswith("M") else 1e9)
    assert abs(spec.params - nominal) / nominal < 0.05  # the size names are the parameter counts


def test_size_in_bits_orders_as_in_the_paper() -> None:
    bits = {m.name: m.size_bits for m in all_models()}
    for size in SIZES:
        quant = [bits[f"QuantLM_{size}_{b}bit"] for b in (3, 4, 6, 8)]
        assert bits[f"TriLM_{size}"] < quant[0] < quant[1] < quant[2] < quant[3] < bits[f"FloatLM_{size}"]
    # The paper's headline: the largest TriLM is smaller in bits than the 830M FloatLM.
    assert bits["TriLM_3.9B"] < bits["FloatLM_830M"]
    floatlm = get_model("FloatLM_99M")
    assert floatlm.size_bits == 16 * floatlm.params


def test_names_aliases_and_release_repos() -> None:
    assert get_model("SpectraSuite/QuantLM_2.3B_4bit_Unpacked").name == "QuantLM_2.4B_4bit"
    assert get_model("trilm_99m").name == "TriLM_99M"
    assert get_model("QuantLM_2.4B_3bit").release_repo == "SpectraSuite/QuantLM_2.3B_3bit_Unpacked"
    assert get_model("TriLM_3.9B").release_repo == "SpectraSuite/TriLM_3.9B_Unpacked"
    assert get_model("FloatLM_1.5B").release_repo == "SpectraSuite/FloatLM_1.5B"
    assert get_model("QuantLM_1.1B_8bit").base_model == "FloatLM_1.1B"


@pytest.mark.parametrize("name,message", [
    ("TriLM_5B", "unknown suite size '5B'"),
    ("GPT_99M", "unknown suite model"),
    ("QuantLM_99M_5bit", "bit widths"),
    ("TriLM_99M_4bit", "only QuantLM"),
])
def test_unknown_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(SpectraError, match=message):
        get_model(name)


def test_config_for_builds_each_family() -> None:
    trilm = config_for("TriLM_3.9B")
    assert trilm.model_type == "trilm" and trilm.pretraining_model_parallel == 6 and trilm.head_dim == 128
    assert config_for("QuantLM_99M_4bit").model_type == "floatlm"
    tiny = config_for("TriLM_2.4B", tiny=True, vocab_size=300)
    assert tiny.pretraining_model_parallel == 3 and tiny.vocab_size == 300 and tiny.num_hidden_layers == 2
    assert tiny.hidden_size % 32 == 0 and tiny.intermediate_size % 32 == 0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spectra_hf.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_suite_json_lists_54_models_with_the_documented_fields() -> None:
    result = run_cli("suite", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 54
    for row in rows:
        assert {"name", "family", "size", "bits", "params", "size_bits"} <= set(row)
        assert row["params"] == get_model(row["name"]).params
        assert (row["bits"] is None) == (row["family"] != "quantlm")


@pytest.mark.slow  # three CLI processes that import torch
def test_cli_init_tiny_and_bad_name(tmp_path) -> None:
    result = run_cli("init", "TriLM_1.1B", str(tmp_path / "m"), "--tiny")
    assert result.returncode == 0, result.stderr
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.model_type == "trilm" and model.config.pretraining_model_parallel == 2

    bad = run_cli("init", "TriLM_7B", str(tmp_path / "x"))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("spectra-hf init: error: unknown suite size '7B'")
    assert not (tmp_path / "x").exists()
    again = run_cli("init", "TriLM_1.1B", str(tmp_path / "m"), "--tiny")
    assert again.returncode == 2 and "not empty" in again.stderr


# Architectures unlike any suite size: grouped-query attention, a head_dim that is not hidden / heads, tied embeddings.
ODD_ARCHITECTURES = [
    {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
     "num_hidden_layers": 3, "vocab_size": 100, "tie_word_embeddings": False},
    {"hidden_size": 48, "intermediate_size": 160, "num_attention_heads": 6, "num_key_value_heads": 6,
     "num_hidden_layers": 2, "vocab_size": 77, "tie_word_embeddings": True},
]


def _meta_llama(architecture: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**architecture))


@pytest.mark.parametrize("architecture", ODD_ARCHITECTURES)
def test_linear_shapes_are_the_shapes_of_transformers_linears(architecture: dict) -> None:
    model = _meta_llama(architecture)
    block = model.model.layers[0]
    expected = {path: tuple(block.get_submodule(path).weight.shape) for path in linear_shapes(model.config)}
    assert len(expected) == 7
    assert linear_shapes(model.config) == expected  # a config object
    assert linear_shapes(model.config.to_dict()) == expected  # a config.json dict
    assert linear_shapes(architecture) == expected
    # the registry's torch-free parameter count agrees with the shapes' home
    per_block = sum(out_features * in_features for out_features, in_features in expected.values())
    assert linear_params(architecture) == architecture["num_hidden_layers"] * per_block


@pytest.mark.parametrize("architecture", ODD_ARCHITECTURES)
@pytest.mark.parametrize("bits", [TERNARY_BITS, QUANT_EFFECTIVE_BITS[3], 4.5, FLOAT_BITS])
def test_size_bits_counts_every_parameter_of_the_real_model(architecture: dict, bits: float) -> None:
    model = _meta_llama(architecture)
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    linear = rest = 0
    for name, parameter in model.named_parameters():  # tied weights are listed once
        if name.startswith("model.layers.") and name.split(".")[-2] in projections:
            linear += parameter.numel()
        else:
            rest += parameter.numel()
    assert size_bits(model.config, bits_per_linear_weight=bits) == round(linear * bits + rest * 16)


# Sizes in bits of the 99M models, worked out by hand from the paper's architecture table (shared/SPECTRA.md):
# hidden 512, GLU 1280, 16 layers, vocabulary 50304, untied embedding and head, two RMSNorms per layer plus the final.
#   linear weights  16 x (4 x 512 x 512 + 3 x 512 x 1280)         = 48,234,496
#   float weights   2 x 50304 x 512 + (2 x 16 + 1) x 512           = 51,528,192   (kept at 16 bits)
#   size in bits    48,234,496 x bits per linear weight + 51,528,192 x 16, rounded
PAPER_99M_SIZE_BITS = {
    "TriLM_99M": 900_661_576,  # 1.58 bits per ternary weight
    "QuantLM_99M_3bit": 981_213_184,  # 3.25 (3 bits + group-128 scales)
    "QuantLM_99M_4bit": 1_029_447_680,  # 4.25
    "QuantLM_99M_6bit": 1_113_858_048,  # 6 (per-channel)
    "QuantLM_99M_8bit": 1_210_327_040,  # 8 (per-channel)
    "FloatLM_99M": 1_596_203_008,  # 16 x 99,762,688 parameters
}


def test_registry_sizes_in_bits_are_the_papers() -> None:
    for name, expected in PAPER_99M_SIZE_BITS.items():
        model = get_model(name)
        assert model.size_bits == expected, name
        config = config_for(name).to_dict()  # a QuantLM's config is its FloatLM's
        assert size_bits(config, bits_per_linear_weight=model.bits_per_linear_weight) == expected, name
    # The paper's bits per linear weight: log2(3) rounded for TriLM, GPTQ group-128 parameters at 3 and 4 bits.
    assert [get_model(n).bits_per_linear_weight for n in ("TriLM_99M", "QuantLM_99M_3bit", "QuantLM_99M_4bit",
            "QuantLM_99M_6bit", "QuantLM_99M_8bit", "FloatLM_99M")] == [1.58, 3.25, 4.25, 6, 8, 16]


def test_floatlm_config_defaults_are_the_registry_99m_model() -> None:
    """FloatLMConfig() restates the 99M architecture (modeling/ cannot import the registry): they must agree."""
    from spectra_hf.modeling import FloatLMConfig

    default, registry = FloatLMConfig().to_dict(), config_for("FloatLM_99M").to_dict()
    for key in ("transformers_version", "dtype", "torch_dtype"):
        default.pop(key, None), registry.pop(key, None)
    assert default == registry


def test_trilm_only_keys_are_what_trilm_config_adds_to_floatlm() -> None:
    from spectra_hf.modeling import FloatLMConfig, TriLMConfig
    from spectra_hf.modeling.configuration_trilm import TRILM_ONLY_KEYS, without_trilm_keys

    added = set(TriLMConfig().to_dict()) - set(FloatLMConfig().to_dict())
    assert set(TRILM_ONLY_KEYS) == added == {
        "pretraining_model_parallel", "ternary_eps", "ternary_fused_qkv_scale", "weight_format", "ternary_inference"
    }
    trilm = config_for("TriLM_1.1B", tiny=True).to_dict()
    assert without_trilm_keys(trilm).keys() == trilm.keys() - added
    del trilm["model_type"], trilm["auto_map"]
    assert FloatLMConfig(**without_trilm_keys(trilm)).to_dict().keys() == FloatLMConfig().to_dict().keys()
