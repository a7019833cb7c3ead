"""Incomplete, corrupt and wrong-kind checkpoints are refused before any work, with one error naming the tensor.

Each corruption is made the way it happens to users: a file cut short by an interrupted download, a header with a
flipped byte, a tensor dropped by a hand-edited export, a NaN or negative scale, a scale count that does not match
`pretraining_model_parallel`, a tensor saved in the wrong dtype. `convert` and `info` must exit 2 with one line and
write nothing; `from_pretrained` must raise one OSError; none may raise a bare RuntimeError / KeyError or build a
model from uninitialized memory.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from trilm_release import release_model

from spectra_hf import FloatLMForCausalLM, FloatLMModel, TriLMForCausalLM, TriLMModel
from spectra_hf.cli import main
from spectra_hf.suite import config_for

UP = "model.layers.1.mlp.up_proj"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A packed and a latent TriLM (2 scale shards), a release TriLM, a FloatLM and a float Llama, saved once."""
    root = tmp_path_factory.mktemp("integrity")
    torch.manual_seed(0)
    trilm = TriLMForCausalLM(config_for("TriLM_1.1B", tiny=True)).eval()
    trilm.save_pretrained(root / "packed", weight_format="packed")
    trilm.save_pretrained(root / "latent")
    release_model(2).save_pretrained(root / "release")
    FloatLMForCausalLM(config_for("FloatLM_99M", tiny=True)).save_pretrained(root / "floatlm")
    llama_config = LlamaConfig(**{k: v for k, v in config_for("FloatLM_99M", tiny=True).to_dict().items()
                                  if k not in ("model_type", "architectures", "auto_map")})
    LlamaForCausalLM(llama_config).save_pretrained(root / "llama")
    return {path.name: path for path in root.iterdir()}


def rewrite_tensors(directory: Path, edit) -> None:
    """Re-save model.safetensors with `edit(tensors)` applied (the real safetensors writer, as a user's script
    would)."""
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def edit_header(directory: Path, edit) -> None:
    """Rewrite the JSON header of model.safetensors in place with `edit(header)`, keeping the data bytes."""
    path = directory / "model.safetensors"
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    edit(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def truncate(directory: Path) -> None:
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 100])


def set_tensor(name: str, value) -> callable:
    return lambda directory: rewrite_tensors(directory, lambda t: t.__setitem__(name, value(t[name])))


def drop_tensor(name: str) -> callable:
    return lambda directory: rewrite_tensors(directory, lambda t: t.pop(name))


def wrong_shape_in_header(directory: Path) -> None:
    # The header claims [n // 2, 2] bytes for a uint8 [n] tensor whose data is n bytes: old readers hit a bare
    # RuntimeError in reshape.
    def edit(header):
        entry = header[f"{UP}.weight_packed"]
        entry["shape"] = [entry["shape"][0] // 2, 3]
    edit_header(directory, edit)


# (checkpoint, corruption, what the error must name)
CORRUPTIONS = {
    "truncated file": ("packed", truncate, r"corrupt checkpoint file .*model\.safetensors .*truncated"),
    "garbage header": ("packed", lambda d: edit_header(d, lambda h: h.update({"x": {"dtype": "F32"}})),
                       r"corrupt checkpoint file .*model\.safetensors .*tensor 'x'"),
    "header shape vs bytes": ("packed", wrong_shape_in_header, rf"{UP}\.weight_packed"),
    "packed tensor dropped": ("packed", drop_tensor(f"{UP}.weight_packed"),
                              rf"tensor {UP}\.weight_packed .* is missing"),
    "scale dropped": ("packed", drop_tensor(f"{UP}.weight_scale"), rf"tensor {UP}\.weight_scale .* is missing"),
    "release weight dropped": ("release", drop_tensor(f"{UP}.weight"), rf"tensor {UP}\.weight .* is missing"),
    "latent weight dropped": ("latent", drop_tensor(f"{UP}.weight"), rf"tensor {UP}\.weight .* is missing"),
    "lm_head dropped": ("floatlm", drop_tensor("lm_head.weight"), r"tensor lm_head\.weight .* is missing"),
    "NaN scale": ("packed", set_tensor(f"{UP}.weight_scale", lambda s: torch.full_like(s, float("nan"))),
                  rf"{UP}\.weight_scale holds the scale nan"),
    "negative scale": ("packed", set_tensor(f"{UP}.weight_scale", lambda s: -s),
                       rf"{UP}\.weight_scale holds the scale -"),
    "scale count": ("packed", set_tensor(f"{UP}.weight_scale", lambda s: s[:1].clone()),
                    rf"{UP}\.weight_scale is F32 \[1\], but config\.json implies float \[2\]"),
    "packed bytes short": ("packed", set_tensor(f"{UP}.weight_packed", lambda p: p[:-1].clone()),
                           rf"{UP}\.weight_packed is U8 \[\d+\], but config\.json implies U8"),
    "packed dtype": ("packed", set_tensor(f"{UP}.weight_packed", lambda p: p.view(torch.int8)),
                     rf"{UP}\.weight_packed is I8 .* implies U8"),
    "float weight as int": ("release", set_tensor(f"{UP}.weight", lambda w: w.to(torch.int16)),
                            rf"{UP}\.weight is I16 .* implies float"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoints_are_refused_by_convert_info_and_from_pretrained(
    case, checkpoints, tmp_path, capsys
) -> None:
    kind, corrupt, message = CORRUPTIONS[case]
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints[kind], broken)
    corrupt(broken)
    to = {"packed": "unpacked", "latent": "packed", "release": "packed", "floatlm": "unpacked"}[kind]
    for command in (["convert", str(broken), str(tmp_path / "out"), "--to", to], ["info", str(broken), "--json"]):
        capsys.readouterr()
        assert main(command) == 2, command
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1, error
        assert re.search(message, error[0]), (command, error[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # convert wrote nothing, not even staging
    model_class = FloatLMForCausalLM if kind == "floatlm" else TriLMForCausalLM
    with pytest.raises(OSError, match=message):
        model_class.from_pretrained(broken)


def test_a_packed_byte_out_of_range_is_named_by_convert_and_from_pretrained(checkpoints, tmp_path, capsys) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["packed"], broken)

    def poke(tensors):
        tensors[f"{UP}.weight_packed"][7] = 250
    rewrite_tensors(broken, poke)
    assert main(["convert", str(broken), str(tmp_path / "out"), "--to", "unpacked"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar, found mid-way
    assert error.startswith("spectra-hf convert: error:") and f"{UP}.weight_packed" in error and "242" in error
    assert not (tmp_path / "out").exists()
    with pytest.raises(OSError, match=rf"{UP}\.weight_packed holds the byte 250"):
        TriLMForCausalLM.from_pretrained(broken)


def test_a_missing_shard_of_a_sharded_checkpoint_is_named(tmp_path, capsys) -> None:
    release_model(2).save_pretrained(tmp_path / "release", max_shard_size="200KB")
    index = json.loads((tmp_path / "release" / "model.safetensors.index.json").read_text())
    lost = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / "release" / lost).unlink()
    assert main(["info", str(tmp_path / "release")]) == 2
    assert f"{lost} is listed in model.safetensors.index.json but missing" in capsys.readouterr().err
    with pytest.raises(OSError, match=f"{lost} is listed"):
        TriLMForCausalLM.from_pretrained(tmp_path / "release")


# --- the wrong class -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["packed", "latent"])
def test_floatlm_classes_refuse_a_trilm_naming_the_trilm_class(kind, checkpoints) -> None:
    with pytest.raises(
        OSError,
        match=rf"is a trilm checkpoint \({kind} weights\).*Load it with TriLMForCausalLM or AutoModelForCausalLM",
    ):
        FloatLMForCausalLM.from_pretrained(checkpoints[kind])
    with pytest.raises(OSError, match="Load it with TriLMModel or AutoModelForCausalLM"):
        FloatLMModel.from_pretrained(checkpoints[kind])


def test_trilm_classes_refuse_a_floatlm_naming_the_floatlm_class(checkpoints) -> None:
    with pytest.raises(
        OSError, match=r"is a floatlm checkpoint.*would ternarize its float weights.*FloatLMForCausalLM"
    ):
        TriLMForCausalLM.from_pretrained(checkpoints["floatlm"])
    with pytest.raises(OSError, match="Load it with FloatLMModel or AutoModelForCausalLM"):
        TriLMModel.from_pretrained(checkpoints["floatlm"])


def test_trilm_refuses_a_float_llama_naming_the_tensor_and_the_float_classes(checkpoints) -> None:
    with pytest.raises(
        ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight is not a ternary weight.*LlamaForCausalLM"
    ):
        TriLMForCausalLM.from_pretrained(checkpoints["llama"])


def test_the_right_classes_still_load_each_kind(checkpoints) -> None:
    ids = torch.randint(0, 512, (1, 7))
    release = TriLMForCausalLM.from_pretrained(checkpoints["release"], ternary_inference="dense", dtype=torch.float32)
    reference = LlamaForCausalLM.from_pretrained(checkpoints["release"], dtype=torch.float32)
    # A release TriLM is also a valid float Llama: FloatLM accepts it (its weights are the effective g * T).
    as_float = FloatLMForCausalLM.from_pretrained(checkpoints["release"], dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(release(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(as_float(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert type(AutoModelForCausalLM.from_pretrained(checkpoints["packed"])) is TriLMForCausalLM
    assert type(AutoModelForCausalLM.from_pretrained(checkpoints["floatlm"])) is FloatLMForCausalLM
    model, info = TriLMForCausalLM.from_pretrained(checkpoints["latent"], output_loading_info=True)
    assert not info["missing_keys"] and model.config.weight_format == "latent"


def test_a_hub_checkpoint_missing_a_packed_tensor_does_not_load(checkpoints, local_hub, tmp_path) -> None:
    """Hub checkpoints are not pre-checked on disk: the load report's missing tensors are refused after loading."""
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["packed"], broken)
    drop_tensor(f"{UP}.weight_packed")(broken)
    api = HfApi()
    repo_id = api.create_repo("integrity/TriLM_missing_tensor", exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=broken)
    with pytest.raises(
        OSError, match=rf"integrity/TriLM_missing_tensor is incomplete: tensor {UP}\.weight_packed is missing"
    ):
        TriLMForCausalLM.from_pretrained(repo_id)
