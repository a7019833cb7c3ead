"""`spectra-hf release publish` reports only what it checked (issue 19, items 1-6): a work dir serves one target,
every `published` row is confirmed on the target Hub, downloads are pinned to the discovered commit and hold exactly
the release tree, --max-disk holds during the run, and a damaged journal is one clear error with a way out.

References come from outside the code under test: the local Hub's own refs, trees and LFS sha256s, sha256 of files
downloaded here, the release folders the test built, and `du`-style sizes taken here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from synthetic_release import ReleaseSpec, build_release, release_logits, trilm_checkpoint

import spectra_hf
from spectra_hf.cli import main
from spectra_hf.errors import CheckpointError, ConfigError
from spectra_hf.hub.localhub import LocalHub
from spectra_hf.release import run_release
from spectra_hf.release.journal import JOURNAL_FILE, Journal
from spectra_hf.release.manifest import MANIFEST_FILE

SOURCE = "FaithfulSuite"
MODELS = ["TriLM_99M"]
PROBE = torch.tensor([[0, 17, 250, 3, 99, 480, 12, 7]])  # [1, 8] token ids < 512


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("faithful-hub"), port=0) as hub:
        yield hub


@pytest.fixture(scope="module")
def release(hub, tmp_path_factory, tokenizer):
    """TriLM_99M: its final model (main) and one checkpoint branch (step1000) under org FaithfulSuite."""
    api = HfApi(endpoint=hub.url)
    spec = ReleaseSpec(trilm={"99M": (1, [1000])})
    return build_release(api, spec, tmp_path_factory.mktemp("faithful-release"), tokenizer=tokenizer, org=SOURCE)


def _publish(hub: LocalHub, work: Path, org: str, **options):
    return run_release(
        source_org=SOURCE, target_org=org, work_dir=work, endpoint=hub.url, models=MODELS, progress=False, **options
    )


def _argv(hub: LocalHub, work: Path, org: str, *extra: str) -> list[str]:
    return ["release", "publish", "--from", SOURCE, "--to", org, "--endpoint", hub.url, "--work-dir", str(work),
            "--models", *MODELS, "--no-progress", *extra]  # fmt: skip


def _holds(api: HfApi, row: dict) -> None:
    """The target holds the manifest row: branch at its commit, every file's sha256 (downloaded and hashed here)."""
    heads = {ref.name: ref.target_commit for ref in api.list_repo_refs(row["repo"]).branches}
    assert heads[row["branch"]] == row["commit"], row["branch"]
    tree = {e.path for e in api.list_repo_tree(row["repo"], revision=row["commit"], recursive=True)}
    assert tree - {".gitattributes"} == set(row["files"])
    for path, sha256 in row["files"].items():
        local = api.hf_hub_download(row["repo"], path, revision=row["commit"])
        assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == sha256, path


def test_a_work_dir_serves_one_target(hub, release, tmp_path, capsys):
    work = tmp_path / "work"
    assert main(_argv(hub, work, "first-org")) == 0, capsys.readouterr().err
    assert main(_argv(hub, work, "second-org")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "belongs to another target (publish to first-org at" in err[0], err
    assert not HfApi(endpoint=hub.url).repo_exists("second-org/TriLM_99M")
    manifest = json.loads((work / MANIFEST_FILE).read_text())
    assert manifest["target_org"] == "first-org"  # the first target's manifest is untouched


def test_the_final_check_reprocesses_what_the_target_does_not_hold(hub, release, tmp_path):
    api = HfApi(endpoint=hub.url)
    work = tmp_path / "work"
    first = _publish(hub, work, "checked-org")
    assert first.complete
    step_key, main_key = (row["release"] for row in first.manifest["revisions"])

    # stale: the checkpoint branch was deleted, and main moved on, after the journal said both were published
    api.delete_branch("checked-org/TriLM_99M", branch="step1000")
    api.upload_file(path_or_fileobj=b"edited\n", path_in_repo="NOTES.md", repo_id="checked-org/TriLM_99M")
    again = _publish(hub, work, "checked-org")
    assert again.complete and again.processed == 2 and again.skipped == 2
    keys = [f"{k['repo']}@{k['revision']}" for k in (step_key, main_key)]
    assert first.reprocessed == [] and again.reprocessed == keys
    for row in again.manifest["revisions"]:
        assert row["status"] == "published"
        _holds(api, row)

    # forged: a journal whose lines claim both revisions were published to a target that holds nothing
    forged = tmp_path / "forged"
    with pytest.raises(ConfigError):  # a work dir is bound to its target: forge one for another org
        _publish(hub, work, "forged-org")
    forged.mkdir()
    (forged / "target.json").write_text(json.dumps({"endpoint": hub.url, "mode": "publish", "org": "forged-org"}))
    lines = [
        {"key": f"{k['repo']}@{k['revision']}", "state": "published", "commit": "0" * 40, "source_commit": k["commit"],
         "files": {"model.safetensors": "f" * 64}}
        for k in (step_key, main_key)
    ]  # fmt: skip
    (forged / JOURNAL_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = _publish(hub, forged, "forged-org")
    assert report.complete and report.processed == 2
    for row in report.manifest["revisions"]:
        assert row["files"]["model.safetensors"] != "f" * 64
        _holds(api, row)


def test_a_branch_moved_after_discovery_is_converted_at_the_discovered_commit(hub, tmp_path, tokenizer):
    api = HfApi(endpoint=hub.url)
    folders = build_release(api, ReleaseSpec(trilm={"99M": (1, [1000])}), tmp_path / "r", tokenizer=tokenizer,
                            org="MovingSuite")  # fmt: skip
    discovered = api.list_repo_refs("MovingSuite/TriLM_99M_Unpacked").branches[0].target_commit
    moved = trilm_checkpoint(tmp_path / "moved", mp=1, seed=99, tokenizer=tokenizer)

    def move_main(found) -> None:  # after discovery, before any download: the release's main gets new weights
        api.upload_folder(repo_id="MovingSuite/TriLM_99M_Unpacked", folder_path=str(moved))

    report = run_release(source_org="MovingSuite", target_org="moved-org", work_dir=tmp_path / "work",
                         endpoint=hub.url, models=MODELS, progress=False, on_discovered=move_main)  # fmt: skip
    assert api.list_repo_refs("MovingSuite/TriLM_99M_Unpacked").branches[0].target_commit != discovered
    row = report.manifest["revisions"][1]
    assert row["branch"] == "main" and row["release"]["commit"] == discovered
    local = api.snapshot_download("moved-org/TriLM_99M", revision="main")
    model = spectra_hf.TriLMForCausalLM.from_pretrained(local, dtype=torch.float32, ternary_inference="dense")
    with torch.no_grad():
        logits = model(PROBE).logits
    expected = release_logits(folders["MovingSuite/TriLM_99M_Unpacked@main"], PROBE)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


def test_stray_files_in_the_work_dir_are_not_published(hub, release, tmp_path):
    work = tmp_path / "work"
    for folder in ("download", "convert"):
        for slug in ("TriLM_99M_Unpacked_ckpts@step1000", "TriLM_99M_Unpacked@main"):
            stray = work / folder / f"{SOURCE}--{slug}"
            stray.mkdir(parents=True)
            (stray / "stray_notes.txt").write_text("not part of the release\n")
    report = _publish(hub, work, "stray-org")
    assert report.complete
    api = HfApi(endpoint=hub.url)
    for row in report.manifest["revisions"]:
        assert "stray_notes.txt" not in row["files"]
        assert "stray_notes.txt" not in {e.path for e in api.list_repo_tree(row["repo"], revision=row["branch"])}


def test_max_disk_holds_during_the_run_and_the_run_resumes(hub, release, tmp_path, capsys):
    work = tmp_path / "work"
    size = max(sum(p.stat().st_size for p in folder.iterdir()) for folder in release.values())  # one revision
    budget = 3 * size + 200_000  # passes the preflight estimate (3x the largest revision)
    work.mkdir()
    ballast = work / "ballast.bin"  # something else in the work dir: the run must count it
    ballast.write_bytes(b"\0" * (budget - size))
    assert main(_argv(hub, work, "budget-org", "--max-disk", str(budget))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-disk" in err[0] and "would be passed" in err[0] and "resume" in err[0], err
    held = sum(max(p.stat().st_size, p.stat().st_blocks * 512) for p in work.rglob("*") if p.is_file())
    assert held <= budget

    ballast.unlink()
    report = _publish(hub, work, "budget-org", max_disk=budget)
    assert report.complete and 0 < report.peak_disk_bytes <= budget


@pytest.mark.parametrize(
    "line, problem",
    [
        (b'{"key": "a@main", "state": "published"', "not JSON"),
        (b'{"key": 7, "state": "published", "files": {}}', "no string 'key'"),
        (b'{"key": "a@main"}', "no string 'state'"),
        (b'{"key": "a@main", "state": "published", "files": ["x"]}', "'files' is a list"),
        (b'{"key": "a@main", "state": "published", "files": {"x": "\xff"}}', "invalid UTF-8"),
    ],
)
def test_a_damaged_journal_line_is_one_error_naming_file_and_line(tmp_path, line, problem):
    path = tmp_path / JOURNAL_FILE
    good = b'{"key": "b@main", "state": "downloaded"}\n'
    path.write_bytes(good + line + b"\n" + good)
    with pytest.raises(CheckpointError) as error:
        Journal(path)
    message = str(error.value)
    assert f"{path} line 2 is not a journal record: {problem}" in message and "--rebuild-journal" in message


def test_a_torn_last_line_is_dropped_and_the_next_record_is_kept(tmp_path):
    path = tmp_path / JOURNAL_FILE
    path.write_bytes(b'{"key": "b@main", "state": "downloaded"}\n{"key": "a@main", "sta')
    journal = Journal(path)
    assert list(journal.entries) == ["b@main"]
    journal.record("a@main", "downloaded")
    assert Journal(path).entries["a@main"] == {"key": "a@main", "state": "downloaded"}


def test_a_damaged_journal_is_rebuilt_from_the_target(hub, release, tmp_path):
    work = tmp_path / "work"
    first = _publish(hub, work, "rebuilt-org")
    assert first.complete
    journal = work / JOURNAL_FILE
    journal.write_bytes(journal.read_bytes().replace(b'"state": "published"', b'"state": 3', 1))
    with pytest.raises(CheckpointError, match="line"):
        _publish(hub, work, "rebuilt-org")
    report = _publish(hub, work, "rebuilt-org", rebuild_journal=True)
    assert report.complete and report.processed == 0 and report.commits == 0
    assert report.manifest == first.manifest
    assert (work / (JOURNAL_FILE + ".damaged")).is_file()


def test_the_download_folder_ends_holding_exactly_the_release_tree(hub, release, tmp_path):
    from spectra_hf.release.discovery import discover, select_models
    from spectra_hf.release.disk import DiskBudget
    from spectra_hf.release.download import download_revision

    api = HfApi(endpoint=hub.url)
    (revision,) = [r for r in discover(api, source_org=SOURCE, models=select_models(MODELS)).revisions if r.step]
    source = release[revision.key]
    folder = tmp_path / "download"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # a listed name with other bytes: replaced
    (folder / "stray").mkdir()
    (folder / "stray" / "x.bin").write_bytes(b"x")  # not in the tree: removed
    weights = (source / "model.safetensors").read_bytes()
    (folder / "model.safetensors.part").write_bytes(weights[: len(weights) // 2])  # what a kill left: resumed
    download_revision(revision, folder, endpoint=hub.url, token=None, budget=DiskBudget(folder, limit=None))
    held = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    assert set(held) == {f.path for f in revision.files}
    for name, path in held.items():
        if (source / name).is_file():
            assert path.read_bytes() == (source / name).read_bytes(), name
