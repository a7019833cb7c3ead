"""Conversion between the original release (Llama fp16 g_s * T), packed / latent TriLM, FloatLM and Llama."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM
from trilm_release import release_model

from spectra_hf import FloatLMForCausalLM, TriLMForCausalLM
from spectra_hf.checkpoints.convert import convert_checkpoint
from spectra_hf.checkpoints.io import ShardedWriter
from spectra_hf.checkpoints.staging import remove_stale_staging, staged_directory
from spectra_hf.cli import main
from spectra_hf.errors import SpectraError
from spectra_hf.suite import config_for


def load_tensors(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("mp", [1, 2, 3])
def test_release_converts_to_packed_and_back_byte_identical(mp: int, tmp_path) -> None:
    release = release_model(mp)
    release.save_pretrained(tmp_path / "release", max_shard_size="200KB")  # sharded, like the 3.9B release
    assert (tmp_path / "release" / "model.safetensors.index.json").is_file()
    convert_checkpoint(tmp_path / "release", tmp_path / "packed", progress=False, max_shard_bytes=60_000)
    assert (tmp_path / "packed" / "model.safetensors.index.json").is_file()
    config = json.loads((tmp_path / "packed" / "config.json").read_text())
    assert config["model_type"] == "trilm" and config["weight_format"] == "packed"
    assert config["pretraining_model_parallel"] == mp

    convert_checkpoint(tmp_path / "packed", tmp_path / "unpacked", to="unpacked", progress=False)
    assert_same_tensors(load_tensors(tmp_path / "unpacked"), load_tensors(tmp_path / "release"))
    config = json.loads((tmp_path / "unpacked" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["pretraining_model_parallel"] == mp and "auto_map" not in config

    ids = torch.randint(0, release.config.vocab_size, (2, 13))
    with torch.no_grad():
        reference = LlamaForCausalLM.from_pretrained(tmp_path / "release", dtype=torch.float32)(ids).logits
        packed = TriLMForCausalLM.from_pretrained(tmp_path / "packed", ternary_inference="dense", dtype=torch.float32)
        torch.testing.assert_close(packed(ids).logits, reference, rtol=1e-5, atol=1e-5)
        stock = LlamaForCausalLM.from_pretrained(tmp_path / "unpacked", dtype=torch.float32)
        torch.testing.assert_close(stock(ids).logits, reference, rtol=0, atol=0)


def test_trilm_from_pretrained_reads_the_release_directly(tmp_path) -> None:
    release = release_model(2)
    release.save_pretrained(tmp_path)
    model = TriLMForCausalLM.from_pretrained(tmp_path, ternary_inference="dense", dtype=torch.float32)
    assert model.config.weight_format == "packed" and model.config.pretraining_model_parallel == 2
    ids = torch.randint(0, release.config.vocab_size, (1, 9))
    with torch.no_grad():
        reference = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)(ids).logits
        torch.testing.assert_close(model(ids).logits, reference, rtol=1e-5, atol=1e-5)


def test_non_ternary_and_wrong_shard_layout_are_refused_by_tensor_name(tmp_path) -> None:
    release = release_model(2)
    with torch.no_grad():
        release.model.layers[1].mlp.up_proj.weight[3, 5] = 0.123
    release.save_pretrained(tmp_path / "bad")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(SpectraError, match=r"model\.layers\.1\.mlp\.up_proj\.weight is not a ternary weight"):
            convert_checkpoint(tmp_path / "bad", tmp_path / "out", progress=False)
        gc.collect()
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bad"]
    # the refused shard's side file was closed by the writer, not left open for the garbage collector
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []

    two_shards = release_model(2)
    two_shards.config.pretraining_model_parallel = 1  # two magnitudes per matrix, but the config claims one shard
    two_shards.save_pretrained(tmp_path / "layout")
    assert main(["convert", str(tmp_path / "layout"), str(tmp_path / "out")]) == 2
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight .* shard 0 holds 2"):
        TriLMForCausalLM.from_pretrained(tmp_path / "layout")


def _open_files_under(directory: Path) -> list[str]:
    """The files under `directory` that this process holds open (Linux: /proc/self/fd)."""
    links = (os.readlink(fd) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink())
    return sorted(link for link in links if link.startswith(str(directory)))


def test_an_aborted_sharded_writer_closes_and_removes_its_own_files_only(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("the user's")
    with pytest.raises(RuntimeError, match="midway"), ShardedWriter(tmp_path, max_shard_bytes=64) as writer:
        writer.add("a", torch.arange(16, dtype=torch.float32))  # 64 bytes: shard 0, closed when b arrives
        writer.add("b", torch.arange(8, dtype=torch.float32))  # shard 1, open
        assert _open_files_under(tmp_path) == [str(tmp_path / "shard-00001.tmp.data")]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "shard-00000.tmp", "shard-00001.tmp.data"]
        raise RuntimeError("midway")
    assert _open_files_under(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]

    with ShardedWriter(tmp_path, max_shard_bytes=64) as writer:  # no exception: finish() is the caller's to call
        writer.add("a", torch.arange(16, dtype=torch.float32))
        writer.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "notes.txt"]
    assert torch.equal(load_file(tmp_path / "model.safetensors")["a"], torch.arange(16, dtype=torch.float32))


def test_latent_converts_like_save_pretrained_packed(tmp_path) -> None:
    latent = TriLMForCausalLM(config_for("TriLM_2.4B", tiny=True)).eval()
    latent.save_pretrained(tmp_path / "latent")
    latent.save_pretrained(tmp_path / "saved", weight_format="packed")
    convert_checkpoint(tmp_path / "latent", tmp_path / "packed", to="packed", progress=False)
    assert_same_tensors(load_tensors(tmp_path / "packed"), load_tensors(tmp_path / "saved"))

    convert_checkpoint(tmp_path / "latent", tmp_path / "unpacked", to="unpacked", dtype="float32", progress=False)
    stock = LlamaForCausalLM.from_pretrained(tmp_path / "unpacked")
    ids = torch.randint(0, latent.config.vocab_size, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, latent(ids).logits, rtol=1e-5, atol=1e-5)


def test_floatlm_to_llama_and_back(tmp_path) -> None:
    floatlm = FloatLMForCausalLM(config_for("FloatLM_99M", tiny=True)).to(torch.float16).eval()
    floatlm.save_pretrained(tmp_path / "floatlm")
    assert main(["convert", str(tmp_path / "floatlm"), str(tmp_path / "llama"), "--to", "unpacked"]) == 0
    assert json.loads((tmp_path / "llama" / "config.json").read_text())["model_type"] == "llama"
    convert_checkpoint(tmp_path / "llama", tmp_path / "back", to="floatlm", progress=False)
    assert_same_tensors(load_tensors(tmp_path / "back"), load_tensors(tmp_path / "floatlm"))
    ids = torch.randint(0, floatlm.config.vocab_size, (1, 9))
    with torch.no_grad():
        reference = FloatLMForCausalLM.from_pretrained(tmp_path / "floatlm")(ids).logits
        reloaded = FloatLMForCausalLM.from_pretrained(tmp_path / "back")
        llama = LlamaForCausalLM.from_pretrained(tmp_path / "llama")
        torch.testing.assert_close(llama(ids).logits, reference, rtol=0, atol=0)
        torch.testing.assert_close(reloaded(ids).logits, reference, rtol=0, atol=0)
    with pytest.raises(SpectraError, match="not a TriLM"):
        convert_checkpoint(tmp_path / "floatlm", tmp_path / "nope", to="packed", progress=False)
    with pytest.raises(SpectraError, match="needs an explicit --to"):
        convert_checkpoint(tmp_path / "floatlm", tmp_path / "nope", progress=False)


# --- nothing lost: the output path -------------------------------------------------------------------------------


def tree_bytes(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_out_that_is_or_contains_or_lies_inside_src_is_refused_and_src_kept(tmp_path, capsys, monkeypatch) -> None:
    """`convert ck/release ck --to packed` used to replace ck, deleting the release inside it, and exit 0."""
    monkeypatch.chdir(tmp_path)
    release_model(1).save_pretrained("ck/release")
    Path("ck/notes.txt").write_text("my notes\n")
    before = tree_bytes(tmp_path / "ck")
    for out in ("ck", "ck/release", ".", "ck/release/packed", "ck/release/../release"):
        for extra in ([], ["--overwrite"]):
            capsys.readouterr()
            assert main(["convert", "ck/release", out, "--to", "packed", *extra]) == 2, out
            error = capsys.readouterr().err.strip().splitlines()
            assert len(error) == 1 and "source checkpoint" in error[0], error
            assert tree_bytes(tmp_path / "ck") == before


def test_non_empty_out_is_replaced_only_when_it_is_an_earlier_output_of_the_same_kind(tmp_path, capsys) -> None:
    release_model(2).save_pretrained(tmp_path / "release")
    out = tmp_path / "TriLM_packed"
    out.mkdir()
    (out / "train_log.txt").write_text("the user's own file\n")
    for extra in ([], ["--overwrite"]):
        assert main(["convert", str(tmp_path / "release"), str(out), *extra]) == 2
        assert "not a convert output (it holds train_log.txt)" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["train_log.txt"]

    (out / "train_log.txt").unlink()  # an empty directory is written into
    assert main(["convert", str(tmp_path / "release"), str(out)]) == 0
    first = tree_bytes(out)
    assert main(["convert", str(tmp_path / "release"), str(out)]) == 2
    assert "holds an earlier 'convert --to packed' output: pass --overwrite" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "release"), str(out), "--to", "unpacked", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is an earlier 'convert --to packed' output, not an earlier 'convert --to unpacked'" in err
    assert main(["convert", str(tmp_path / "release"), str(out), "--overwrite"]) == 0
    assert tree_bytes(out) == first and not list(tmp_path.glob(".TriLM_packed.tmp-*"))
    TriLMForCausalLM.from_pretrained(out)  # the replaced output loads

    (out / "README.md").write_text("a card the user added to the output\n")
    assert main(["convert", str(tmp_path / "release"), str(out), "--overwrite"]) == 2
    assert "not a convert output" in capsys.readouterr().err and (out / "README.md").is_file()

    (tmp_path / "notes.gguf").write_text("not a GGUF file\n")
    args = ["convert", str(tmp_path / "release"), str(tmp_path / "notes.gguf"), "--to", "gguf-f16", "--overwrite"]
    assert main(args) == 2
    assert "not a GGUF file" in capsys.readouterr().err and (tmp_path / "notes.gguf").read_text() == "not a GGUF file\n"


KILL_SCRIPT = """
import sys
from spectra_hf.checkpoints.convert import convert_checkpoint
convert_checkpoint(sys.argv[1], sys.argv[2], to="packed", progress=False, max_shard_bytes=1 << 12)
"""


@pytest.mark.slow  # a fresh interpreter importing torch and transformers
def test_a_convert_killed_midway_leaves_a_refused_staging_folder_that_the_next_run_removes(tmp_path, capsys) -> None:
    release_model(3, num_hidden_layers=4).save_pretrained(tmp_path / "release")
    out = tmp_path / "packed"
    foreign = tmp_path / ".packed.tmp-not-ours"  # no marker: not provably ours, never touched
    foreign.mkdir()
    child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "release"), str(out)])
    staging = None
    try:
        while child.poll() is None and staging is None:
            staging = next(tmp_path.glob(".packed.tmp-*/shard-00003.tmp*"), None)  # 3 shards done (of 31)
            time.sleep(0.002)
        assert staging is not None, "convert ended before it was seen writing its fourth shard"
        child.send_signal(signal.SIGKILL)  # mid-convert: three finished shards and a part in the staging folder
    finally:
        child.kill()
        child.wait()
    staging = staging.parent
    assert not out.exists() and (staging / ".spectra-incomplete").is_file()
    assert not (staging / "config.json").exists()  # written last: no loader, stock ones included, takes it
    (staging / "config.json").write_text((tmp_path / "release" / "config.json").read_text())  # even complete-looking
    with pytest.raises(OSError, match="unfinished output"):
        TriLMForCausalLM.from_pretrained(staging)
    capsys.readouterr()
    assert main(["info", str(staging)]) == 2
    assert "unfinished output" in capsys.readouterr().err

    assert main(["convert", str(tmp_path / "release"), str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".packed.tmp-not-ours", "packed", "release"]
    assert not (out / ".spectra-incomplete").exists()
    TriLMForCausalLM.from_pretrained(out)


def test_a_live_writers_staging_folder_is_not_removed(tmp_path) -> None:
    target = tmp_path / "out"
    with staged_directory(target, replace=False) as staging:
        (staging / "partial.bin").write_bytes(b"x")
        assert remove_stale_staging(target) == [] and (staging / "partial.bin").is_file()
    assert (target / "partial.bin").is_file() and not (target / ".spectra-incomplete").exists()
