"""`spectra-hf info`: family, suite size, format, parameters and ternary statistics of any checkpoint kind."""

from __future__ import annotations

import json

import pytest
from trilm_release import release_model

from spectra_hf import FloatLMForCausalLM, TernaryLinear, TriLMForCausalLM
from spectra_hf.checkpoints.info import describe_checkpoint, suite_size
from spectra_hf.cli import main
from spectra_hf.errors import SpectraError
from spectra_hf.modeling import ternary_kernels
from spectra_hf.suite import SIZES, config_for


@pytest.mark.parametrize("size", list(SIZES))
def test_suite_size_is_matched_by_architecture(size: str) -> None:
    assert suite_size(config_for(f"TriLM_{size}").to_dict()) == size
    assert suite_size(config_for(f"TriLM_{size}", tiny=True).to_dict()) is None


def test_trilm_kinds_are_told_apart_with_the_same_statistics(tmp_path) -> None:
    model = TriLMForCausalLM(config_for("TriLM_1.1B", tiny=True)).eval()
    model.save_pretrained(tmp_path / "latent")
    model.save_pretrained(tmp_path / "packed", weight_format="packed")
    latent, packed = describe_checkpoint(tmp_path / "latent"), describe_checkpoint(tmp_path / "packed")
    assert (latent["format"], latent["resumable"]) == ("latent", True)
    assert (packed["format"], packed["resumable"]) == ("packed", False)
    assert latent["family"] == packed["family"] == "trilm" and latent["pretraining_model_parallel"] == 2
    assert latent["params"] == packed["params"] == model.num_parameters()
    assert latent["ternary_bits_per_weight"] == 32 and 1.6 <= packed["ternary_bits_per_weight"] < 1.62
    # info names the CPU path `auto` takes: the loaded model's layers agree with it.
    loaded = TriLMForCausalLM.from_pretrained(tmp_path / "packed")
    paths = {m.inference_path for m in loaded.modules() if isinstance(m, TernaryLinear)}
    if packed["cpu_inference"].startswith("C++"):
        assert paths == {"2bit"}
        variant = ternary_kernels.choose_variant(ternary_kernels.cpu_flags())  # the instruction set in force
        assert f"{variant} variant" in packed["cpu_inference"]
    else:  # no compiler: torch's int4 kernel (int8 where the width does not suit it)
        assert paths and paths <= {"int4", "int8"}

    stats = model.ternary_stats()
    total = sum(1 for _ in stats)
    assert total == 7 * model.config.num_hidden_layers
    numel = {n: m.in_features * m.out_features for n, m in model.named_modules() if n in stats}
    zero = sum(stats[n]["zero_fraction"] * numel[n] for n in stats) / sum(numel.values())
    for info in (latent, packed):
        assert info["zero_fraction"] == pytest.approx(zero, abs=1e-12)
        assert info["plus_fraction"] + info["minus_fraction"] + info["zero_fraction"] == pytest.approx(1)
        assert info["scale_min"] == min(min(s["scales"]) for s in stats.values())


def test_release_and_floatlm(tmp_path, capsys) -> None:
    release_model(3).save_pretrained(tmp_path / "release")
    FloatLMForCausalLM(config_for("FloatLM_99M", tiny=True)).save_pretrained(tmp_path / "floatlm")
    assert main(["info", str(tmp_path / "release"), "--json"]) == 0
    release = json.loads(capsys.readouterr().out)
    assert release["format"] == "unpacked release" and release["pretraining_model_parallel"] == 3
    assert release["ternary_bits_per_weight"] == 16 and 0.2 < release["zero_fraction"] < 0.45
    floatlm = describe_checkpoint(tmp_path / "floatlm", stats=False)
    assert (floatlm["family"], floatlm["format"], floatlm["size"]) == ("floatlm", "float", None)
    assert main(["info", str(tmp_path / "floatlm")]) == 0
    assert "float" in capsys.readouterr().out


def test_missing_or_corrupt_checkpoints_give_one_clear_error(tmp_path, capsys) -> None:
    with pytest.raises(SpectraError, match=r"no checkpoint at .*does not exist"):
        describe_checkpoint(tmp_path / "nowhere")
    model = TriLMForCausalLM(config_for("TriLM_99M", tiny=True))
    model.save_pretrained(tmp_path / "ckpt", weight_format="packed")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert main(["info", str(tmp_path / "ckpt")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "corrupt checkpoint file" in error[0] and "model.safetensors" in error[0]
    (tmp_path / "ckpt" / "config.json").write_text("{")
    with pytest.raises(SpectraError, match=r"config\.json is corrupt"):
        describe_checkpoint(tmp_path / "ckpt")


def test_a_config_that_disagrees_with_the_weights_is_one_line_not_a_key_error(tmp_path, capsys) -> None:
    """A hand-edited config.json (a key dropped: the class default 11008 applies) used to end in a KeyError."""
    TriLMForCausalLM(config_for("TriLM_99M", tiny=True)).save_pretrained(tmp_path / "packed", weight_format="packed")
    config = json.loads((tmp_path / "packed" / "config.json").read_text())
    del config["intermediate_size"]
    (tmp_path / "packed" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["info", str(tmp_path / "packed")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "mlp.gate_proj.weight_packed is U8 [2458], but config.json implies U8 [" in error[0]
