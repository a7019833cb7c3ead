"""Flipped bytes in a checkpoint's tensors are caught: every packed TriLM file records each tensor's sha256 in its
safetensors metadata, and `verify`, `info`, `convert`, publish verification and `from_pretrained` check it.

A flipped packed byte that stays in 0..242 passes every header and range check (it decodes to five other digits):
only a content digest tells the model changed. Checkpoints without digests (older exports, latent checkpoints,
files rewritten by other tools) still load and say so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spectra_hf import TriLMForCausalLM
from spectra_hf.checkpoints.verify import verify_checkpoint
from spectra_hf.cli import main
from spectra_hf.errors import CheckpointError
from spectra_hf.modeling.checkpoint_checks import read_safetensors_file_header
from spectra_hf.modeling.checkpoint_digests import DIGEST_KEY
from spectra_hf.suite import config_for

UP = "model.layers.1.mlp.up_proj.weight_packed"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A tiny TriLM (2 layers) saved packed (one file, and sharded into several) and latent."""
    root = tmp_path_factory.mktemp("digests")
    torch.manual_seed(0)
    model = TriLMForCausalLM(config_for("TriLM_99M", tiny=True)).eval()
    model.save_pretrained(root / "packed", weight_format="packed")
    model.save_pretrained(root / "sharded", weight_format="packed", max_shard_size="40KB")
    model.save_pretrained(root / "latent")
    return {path.name: path for path in root.iterdir()}


def flip_byte(directory: Path, name: str, file: str = "model.safetensors") -> None:
    """Change one byte of tensor `name` in place to another value in 0..242 (still a valid packed byte)."""
    path = directory / file
    entry = read_safetensors_file_header(path)[0][name]
    with open(path, "r+b") as handle:
        handle.seek(entry.start + 3)
        old = handle.read(1)[0]
        handle.seek(entry.start + 3)
        handle.write(bytes([(old + 1) % 243]))


def test_packed_save_records_a_digest_per_tensor_and_verify_checks_them(saved, capsys):
    entries, metadata = read_safetensors_file_header(saved["packed"] / "model.safetensors")
    assert set(json.loads(metadata[DIGEST_KEY])) == set(entries)
    assert main(["verify", str(saved["packed"])]) == 0
    assert f"{len(entries)} tensors checked, every sha256 digest matches" in capsys.readouterr().out
    # sharded: every shard records its own tensors; the index is untouched and still loads
    shards = sorted(saved["sharded"].glob("model-*.safetensors"))
    assert len(shards) > 1
    assert all(DIGEST_KEY in read_safetensors_file_header(shard)[1] for shard in shards)
    report = verify_checkpoint(saved["sharded"])
    assert report.complete and report.checked == len(entries)
    TriLMForCausalLM.from_pretrained(saved["sharded"])


def test_a_flipped_packed_byte_is_refused_by_every_reader_naming_the_tensor(saved, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(saved["packed"], broken)
    flip_byte(broken, UP)
    for command in (["verify", str(broken)], ["info", str(broken), "--json"],
                    ["convert", str(broken), str(tmp_path / "out"), "--to", "unpacked"]):
        assert main(command) == 2, command
        error = capsys.readouterr().err
        assert UP in error and "does not match its recorded sha256 digest" in error, (command, error)
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match=UP):
        verify_checkpoint(broken)
    with pytest.raises(OSError, match=UP):
        TriLMForCausalLM.from_pretrained(broken)
    # the check can be turned off at load, and then the different model loads (what the digest exists to catch)
    TriLMForCausalLM.from_pretrained(broken, verify_digests=False)


def test_a_tensor_without_its_digest_is_refused(saved, tmp_path, capsys):
    """A digest record that does not cover a file's tensors (a tensor added or renamed after saving) fails too."""
    edited = tmp_path / "edited"
    shutil.copytree(saved["packed"], edited)
    path = edited / "model.safetensors"
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    digests = json.loads(header["__metadata__"][DIGEST_KEY])
    del digests[UP]
    header["__metadata__"][DIGEST_KEY] = json.dumps(digests)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])
    assert main(["verify", str(edited)]) == 2
    assert f"tensor {UP} in model.safetensors has no recorded digest" in capsys.readouterr().err


def test_checkpoints_without_digests_still_load_and_say_so(saved, capsys):
    assert main(["verify", str(saved["latent"])]) == 0
    assert "no digests recorded (1 weight files)" in capsys.readouterr().out
    assert main(["info", str(saved["latent"]), "--json", "--no-stats"]) == 0
    assert json.loads(capsys.readouterr().out)["digests"].startswith("no digests recorded")
    TriLMForCausalLM.from_pretrained(saved["latent"])


def test_convert_writes_digests_and_checks_its_source(saved, tmp_path, capsys):
    out = tmp_path / "packed-again"
    assert main(["convert", str(saved["latent"]), str(out), "--to", "packed"]) == 0
    report = verify_checkpoint(out)
    entries = read_safetensors_file_header(out / "model.safetensors")[0]
    assert report.complete and report.checked == len(entries)
    # the converted bytes equal what save_pretrained wrote, and so do their digests
    saved_digests = json.loads(read_safetensors_file_header(saved["packed"] / "model.safetensors")[1][DIGEST_KEY])
    converted = json.loads(read_safetensors_file_header(out / "model.safetensors")[1][DIGEST_KEY])
    assert converted[UP] == saved_digests[UP]
    assert main(["info", str(out), "--no-stats"]) == 0
    assert "digests" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("file", "garbage"),
    [("tokenizer.json", b"\x00garbage, not a tokenizer"), ("tokenizer.json", b'{"model": {"type": "nonsense"}}'),
     ("generation_config.json", b'{"max_length": 2'), ("special_tokens_map.json", b"[1, 2]")],
)
def test_convert_refuses_a_side_file_its_loaders_cannot_parse(saved, tokenizer_dir, tmp_path, capsys, file, garbage):
    source = tmp_path / "src"
    shutil.copytree(saved["latent"], source)
    for path in Path(tokenizer_dir).iterdir():
        shutil.copy2(path, source / path.name)
    (source / file).write_bytes(garbage)
    assert main(["convert", str(source), str(tmp_path / "out"), "--to", "packed"]) == 2
    error = capsys.readouterr().err
    assert f"{source / file} is not a readable {file}" in error, error
    assert not (tmp_path / "out").exists()


def test_convert_copies_parsable_side_files_through(saved, tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    source = tmp_path / "src"
    shutil.copytree(saved["latent"], source)
    for path in Path(tokenizer_dir).iterdir():
        shutil.copy2(path, source / path.name)
    assert main(["convert", str(source), str(tmp_path / "out"), "--to", "packed"]) == 0
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    assert AutoTokenizer.from_pretrained(tmp_path / "out")("hello").input_ids


def test_a_hub_checkpoint_is_checked_after_download(saved, local_hub, tmp_path):
    """A packed checkpoint whose bytes changed after its digests were recorded, published and loaded by repo id."""
    from huggingface_hub import HfApi

    broken = tmp_path / "broken"
    shutil.copytree(saved["packed"], broken)
    flip_byte(broken, UP)
    api = HfApi()
    api.create_repo("digests/broken", exist_ok=True)
    api.upload_folder(folder_path=broken, repo_id="digests/broken")
    with pytest.raises(OSError, match=f"corrupt checkpoint digests/broken: tensor {UP}"):
        TriLMForCausalLM.from_pretrained("digests/broken", cache_dir=tmp_path / "cache")
    TriLMForCausalLM.from_pretrained("digests/broken", cache_dir=tmp_path / "cache", verify_digests=False)


DIGEST_MEMORY_SCRIPT = """
import ctypes, gc, json, sys
from spectra_hf.modeling.checkpoint_checks import read_safetensors_file_header
from spectra_hf.modeling.checkpoint_digests import tensor_digests

def anonymous() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("RssAnon:")).split()[1]) * 1024

path = sys.argv[1]
entries, _ = read_safetensors_file_header(path)
before = anonymous()
digests = tensor_digests(path, entries)
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
print(json.dumps({"kept": anonymous() - before, "digests": digests}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status")
def test_hashing_a_checkpoint_keeps_no_memory_after_it(tmp_path) -> None:
    """Digests are checked on every load; the hashing threads' read buffers must not stay in the process (they did:
    8 MiB `bytes` per read, kept by glibc's per-thread malloc arenas, ~31 MiB after a 99M TriLM's load)."""
    torch.manual_seed(0)
    tensors = {f"t{i}": torch.randint(0, 255, (12 << 20,), dtype=torch.uint8) for i in range(6)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    done = subprocess.run(
        [sys.executable, "-c", DIGEST_MEMORY_SCRIPT, str(path)], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["digests"] == {name: hashlib.sha256(t.numpy().tobytes()).hexdigest() for name, t in tensors.items()}
    assert result["kept"] < 4 << 20, result["kept"]
