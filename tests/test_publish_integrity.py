"""Publishing checks content, not listings: corrupt bytes on the Hub are found and repaired, and a local file
rewritten behind the hash cache's back (same size, mtime put back as `cp -p` / `rsync -t` do) is published again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download

from spectra_hf.checkpoints.exports import checkpoint_dir, model_dir
from spectra_hf.errors import ConfigError
from spectra_hf.hub.localhub import LocalHub
from spectra_hf.hub.pacing import HubLimits
from spectra_hf.hub.plan import build_plan
from spectra_hf.hub.publish import publish
from spectra_hf.testing.standin import build_standin_suite

MODEL = "FloatLM_99M"
FAST = HubLimits.unlimited()


@pytest.fixture
def suite(tmp_path, tokenizer) -> Path:
    return build_standin_suite(tmp_path / "suite", steps=(100, 200), tokenizer=tokenizer, models=[MODEL])


def _rewrite_in_place_keeping_mtime(path: Path) -> bytes:
    """Change bytes inside the file (same size) and put its mtime back, as `cp -p` over it would; the new content."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(b ^ 0x55 for b in data[-64:])  # tensor bytes at the end; the safetensors header stays valid
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size
    return bytes(data)


def _flip_stored_blob(hub: LocalHub, data: bytes) -> None:
    blob = hub.context.store.blobs.path(hashlib.sha256(data).hexdigest())
    with open(blob, "r+b") as handle:
        handle.seek(blob.stat().st_size // 2)
        handle.write(b"\x00\xff\x00\xff")


def test_publish_finds_and_repairs_corrupt_bytes_on_the_hub(suite, tmp_path):
    plan = build_plan(suite, org="integrity", models=[MODEL])
    files = sum(len(branch.files) for repo in plan.repos for branch in repo.branches)
    weights = checkpoint_dir(suite, MODEL, 200) / "model.safetensors"
    with LocalHub(tmp_path / "hub") as hub:
        first = publish(plan, endpoint=hub.url, limits=FAST, progress=False)
        assert first.verified and first.verify_mode == "full" and first.files_verified == files
        assert first.files_repaired == 0

        _flip_stored_blob(hub, weights.read_bytes())
        listing_only = publish(plan, endpoint=hub.url, limits=FAST, progress=False, verify="listing")
        assert listing_only.commits == 0  # the tree still lists the right sha256: a listing cannot see this

        again = publish(plan, endpoint=hub.url, limits=FAST, progress=False)
        assert again.verified and again.files_repaired == 1 and again.commits == 1
        assert "1 repaired" in again.summary()
        path = hf_hub_download(f"integrity/{MODEL}", "model.safetensors", revision="step200", endpoint=hub.url,
                               cache_dir=tmp_path / "cache")
        assert Path(path).read_bytes() == weights.read_bytes()
        assert publish(plan, endpoint=hub.url, limits=FAST, progress=False).commits == 0


def test_sampled_verification_downloads_within_its_budget(suite, tmp_path):
    plan = build_plan(suite, org="sample", models=[MODEL])
    with LocalHub(tmp_path / "hub") as hub:
        report = publish(
            plan, endpoint=hub.url, limits=FAST, progress=False, verify="sample", verify_sample_bytes=200_000
        )
        assert report.verify_mode == "sample" and 0 < report.bytes_verified <= 200_000
        with pytest.raises(ConfigError, match="verify='quick'"):
            publish(plan, endpoint=hub.url, limits=FAST, progress=False, verify="quick")


def test_a_file_rewritten_with_its_old_mtime_is_published_again(suite, tmp_path):
    plan = build_plan(suite, org="mtime", models=[MODEL])
    weights = model_dir(suite, MODEL) / "model.safetensors"
    with LocalHub(tmp_path / "hub") as hub:
        publish(plan, endpoint=hub.url, limits=FAST, progress=False, verify="listing")
        new_content = _rewrite_in_place_keeping_mtime(weights)
        # "listing" on purpose: the hash cache alone must notice, not the content check after it.
        report = publish(build_plan(suite, org="mtime", models=[MODEL]), endpoint=hub.url, limits=FAST, progress=False,
                         verify="listing")
        assert report.commits == 1 and report.files_uploaded == 1
        remote = {f.path: f for f in HfApi(endpoint=hub.url).list_repo_tree(f"mtime/{MODEL}") if hasattr(f, "lfs")}
        assert remote["model.safetensors"].lfs.sha256 == hashlib.sha256(new_content).hexdigest()


def test_cli_verify_option(suite, tmp_path, capsys):
    from spectra_hf.cli import main as cli_main

    with LocalHub(tmp_path / "hub") as hub:
        common = [str(suite), "--org", "cli", "--endpoint", hub.url, "--models", MODEL, "--no-progress"]
        assert cli_main(["publish", *common, "--verify", "listing"]) == 0
        assert "verified (listing)" in capsys.readouterr().out
        assert cli_main(["publish", *common]) == 0  # a local Hub: every file's content by default
        plan = build_plan(suite, org="cli", models=[MODEL])
        files = sum(len(branch.files) for repo in plan.repos for branch in repo.branches)
        assert f"verified (full: {files} files" in capsys.readouterr().out
