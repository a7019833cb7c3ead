"""Nothing published tells the world where the publisher's files were: no absolute path of the publishing machine
goes into any file of any repo or branch (cards, configs, tokenizer files, revisions.json; spectra_export.json stays
local, but records base names too)."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import HfApi, snapshot_download

from spectra_hf.cli import main as cli_main

ORG = "pathcheck"
SECRET = "SECRET-workdir-xyz"


@pytest.mark.slow  # trains two tiny models for 2 steps, GPTQ at 4 bits, publishes and downloads every branch
def test_no_path_of_the_publishing_machine_in_any_published_file(tmp_path, tokenizer_dir, corpus_files, local_hub):
    work = tmp_path / SECRET
    work.mkdir()
    shutil.copytree(tokenizer_dir, work / "tok")
    shutil.copy(corpus_files[0], work / "train.txt")
    tiny = ["--tiny", "true", "--block_size", "32", "--global_batch_size", "2", "--per_device_train_batch_size", "2"]
    for name in ("TriLM_99M", "FloatLM_99M"):
        # Every path given as an absolute one, as a user's shell completion would write it.
        assert cli_main([
            "train", name, *tiny, "--max_steps", "2", "--tokenizer", str(work / "tok"),
            "--data_files", str(work / "train.txt"), "--suite_dir", str(work / "suite"),
            "--output_dir", str(work / "runs" / name),
        ]) == 0  # fmt: skip
    assert cli_main([
        "quantize", str(work / "suite" / "FloatLM_99M"), str(work / "suite"), "--bits", "4",
        "--calibration", str(work / "train.txt"), "--calibration-samples", "4", "--calibration-length", "32",
    ]) == 0  # fmt: skip
    assert cli_main(["publish", str(work / "suite"), "--org", ORG, "--endpoint", local_hub.url, "--allow-partial"]) == 0

    api = HfApi(endpoint=local_hub.url, token=False)
    repos = [model.id for model in api.list_models(author=ORG)]
    assert {f"{ORG}/TriLM_99M", f"{ORG}/FloatLM_99M", f"{ORG}/QuantLM_99M_4bit"} <= set(repos)
    downloads = tmp_path / "downloads"
    checked: dict[str, bytes] = {}
    for repo in repos:
        for branch in api.list_repo_refs(repo).branches:
            local = downloads / repo / branch.name
            snapshot_download(repo, revision=branch.name, local_dir=local, endpoint=local_hub.url, token=False)
            for path in local.rglob("*"):
                if path.is_file() and ".cache" not in path.relative_to(local).parts:
                    checked[f"{repo}@{branch.name}:{path.relative_to(local)}"] = path.read_bytes()
    assert any(name.endswith("README.md") for name in checked) and any(name.endswith("config.json") for name in checked)
    leaks = [
        name
        for name, data in checked.items()
        if SECRET.encode() in data or str(tmp_path).encode() in data or str(tmp_path.resolve()).encode() in data
    ]
    assert not leaks, f"published files naming the publishing machine's paths: {leaks}"
    # What the paths were replaced by: the calibration text is named by its file name.
    card = checked[f"{ORG}/QuantLM_99M_4bit@main:README.md"].decode()
    assert "tokens of files:train.txt" in card
    assert "The recipe below" not in card  # a scaled-down model has no recipe table to point at
