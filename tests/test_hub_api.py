"""The local Hub as the Hub: what huggingface_hub, the `hf` CLI and transformers read about repos (listing with its
filters, model_info's metadata from card, config and safetensors headers, task inference), and the repo-management
calls (settings, move, super-squash, `hf repos ls`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import save_file

from spectra_hf.hub.localhub import LocalHub

CARD = """---
license: apache-2.0
tags:
- ternary
- spectra
datasets:
- cerebras/SlimPajama-627B
---
# A tiny model
"""


def _tiny_llama(directory: Path, vocab_size: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return model


def _hf_cli(hub: LocalHub, *args: str) -> subprocess.CompletedProcess:
    """The `hf` command installed with huggingface_hub, pointed at the local Hub."""
    hf = Path(sys.executable).with_name("hf")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "NO_COLOR": "1"}
    env.pop("HF_TOKEN", None)
    return subprocess.run([str(hf), *args], capture_output=True, text=True, env=env, timeout=120)


def test_list_models_filters_by_author_search_and_tags(hub, api, tmp_path):
    _tiny_llama(tmp_path / "llama")
    for repo in ("spectra/TriLM_99M", "spectra/FloatLM_99M", "other/TriLM_copy"):
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=tmp_path / "llama")
    api.upload_file(path_or_fileobj=CARD.encode(), path_in_repo="README.md", repo_id="spectra/TriLM_99M")
    api.create_repo("spectra/data", repo_type="dataset")

    assert sorted(m.id for m in api.list_models(author="spectra")) == ["spectra/FloatLM_99M", "spectra/TriLM_99M"]
    assert sorted(m.id for m in api.list_models(search="trilm")) == ["other/TriLM_copy", "spectra/TriLM_99M"]
    assert [m.id for m in api.list_models(author="spectra", filter="ternary")] == ["spectra/TriLM_99M"]
    assert [m.id for m in api.list_models(filter=["ternary", "license:apache-2.0"])] == ["spectra/TriLM_99M"]
    assert sorted(m.id for m in api.list_models(pipeline_tag="text-generation")) == [
        "other/TriLM_copy", "spectra/FloatLM_99M", "spectra/TriLM_99M"]
    assert len(list(api.list_models(limit=2))) == 2
    assert [d.id for d in api.list_datasets(author="spectra")] == ["spectra/data"]
    listed = next(iter(api.list_models(search="TriLM_99M", cardData=True)))
    assert listed.card_data["license"] == "apache-2.0" and listed.pipeline_tag == "text-generation"


def test_hf_models_ls_author(hub, api):
    for repo in ("spectra/TriLM_99M", "spectra/FloatLM_99M", "other/TriLM_copy"):
        api.create_repo(repo)
    done = _hf_cli(hub, "models", "ls", "--author", "spectra", "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(row["id"] for row in json.loads(done.stdout)) == ["spectra/FloatLM_99M", "spectra/TriLM_99M"]


def test_model_info_carries_what_the_hub_derives_from_card_config_and_weights(hub, api, tmp_path):
    model = _tiny_llama(tmp_path / "llama")
    api.create_repo("spectra/tiny")
    api.upload_folder(repo_id="spectra/tiny", folder_path=tmp_path / "llama")
    api.upload_file(path_or_fileobj=CARD.encode(), path_in_repo="README.md", repo_id="spectra/tiny")

    info = api.model_info("spectra/tiny")
    assert info.pipeline_tag == "text-generation" and info.library_name == "transformers"
    assert {"ternary", "spectra", "transformers", "safetensors", "llama", "text-generation",
            "license:apache-2.0", "dataset:cerebras/SlimPajama-627B"} <= set(info.tags)
    assert info.config["architectures"] == ["LlamaForCausalLM"] and info.config["model_type"] == "llama"
    assert info.card_data["license"] == "apache-2.0"
    # The reference: transformers' own count of the model that was saved (tied embeddings stored once).
    assert info.safetensors.total == model.num_parameters()
    assert info.safetensors.parameters == {"F32": model.num_parameters()}


def test_a_declared_total_in_safetensors_metadata_wins_over_the_header_count(hub, api, tmp_path):
    # A packed TriLM stores 5 ternary weights per uint8: the header alone undercounts, so the writer declares it.
    packed = {"layer.weight_packed": torch.zeros(20, dtype=torch.uint8), "layer.weight_scale": torch.ones(1)}
    save_file(packed, str(tmp_path / "model.safetensors"), metadata={"format": "pt", "total": "101"})
    api.create_repo("spectra/packed")
    api.upload_file(
        path_or_fileobj=tmp_path / "model.safetensors", path_in_repo="model.safetensors", repo_id="spectra/packed"
    )
    info = api.model_info("spectra/packed")
    assert info.safetensors.total == 101 and info.safetensors.parameters == {"U8": 20, "F32": 1}


def test_pipeline_infers_its_task_from_the_local_hub(local_hub, tmp_path, tokenizer):
    from transformers import pipeline

    _tiny_llama(tmp_path / "llama", vocab_size=len(tokenizer))
    tokenizer.save_pretrained(tmp_path / "llama")
    api = HfApi()  # HF_ENDPOINT (set by conftest) is the session's local Hub, as it is for transformers
    api.create_repo("spectra/pipeline-tiny", exist_ok=True)
    api.upload_folder(repo_id="spectra/pipeline-tiny", folder_path=tmp_path / "llama")
    generator = pipeline(model="spectra/pipeline-tiny", model_kwargs={"cache_dir": str(tmp_path / "cache")})
    assert generator.task == "text-generation"
    assert isinstance(generator("hello", max_new_tokens=3, do_sample=False)[0]["generated_text"], str)


def test_settings_move_and_super_squash(hub, api):
    api.create_repo("spectra/a")
    for i in range(3):
        api.upload_file(path_or_fileobj=str(i).encode(), path_in_repo=f"f{i}.txt", repo_id="spectra/a")
    api.create_branch("spectra/a", branch="step1")
    assert len(api.list_repo_commits("spectra/a")) == 4

    api.super_squash_history("spectra/a", commit_message="squashed")
    commits = api.list_repo_commits("spectra/a")
    assert [c.title for c in commits] == ["squashed"]
    assert sorted(api.list_repo_files("spectra/a")) == [".gitattributes", "f0.txt", "f1.txt", "f2.txt"]
    assert len(api.list_repo_commits("spectra/a", revision="step1")) == 4  # other branches keep their history

    api.update_repo_settings("spectra/a", private=True)
    assert api.model_info("spectra/a").private is True
    api.update_repo_settings("spectra/a", visibility="public")
    assert api.model_info("spectra/a").private is False

    api.move_repo("spectra/a", "elsewhere/b")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("spectra/a")
    assert api.model_info("elsewhere/b").sha == commits[0].commit_id


def test_hf_repos_ls_lists_repos_with_storage(hub, api):
    api.create_repo("spectra/one")
    api.upload_file(path_or_fileobj=b"x" * 1000, path_in_repo="x.txt", repo_id="spectra/one")
    api.create_repo("spectra/two", private=True)
    api.create_repo("other/three")
    done = _hf_cli(hub, "repos", "ls", "--namespace", "spectra", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["id"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"spectra/one", "spectra/two"}
    stored = {repo.id: repo for repo in api.list_user_repos(namespace="spectra")}
    assert stored["spectra/two"].visibility == "private" and stored["spectra/one"].storage >= 1000
