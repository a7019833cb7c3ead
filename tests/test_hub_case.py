"""Repo and namespace names are case-insensitive on the local Hub, as on the Hub: `Spectra/model1`,
`spectra/model1` and `SPECTRA/Model1` are one repo, read under any spelling and answered with its stored id; creating
it again answers 409 naming that spelling. `publish` refuses an --org that differs from an existing one only in
case. All through the real huggingface_hub client."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from spectra_hf.errors import ConfigError
from spectra_hf.hub.localhub import LocalHub
from spectra_hf.hub.pacing import HubLimits
from spectra_hf.hub.plan import build_plan
from spectra_hf.hub.publish import publish
from spectra_hf.testing.standin import build_standin_suite


def test_one_repo_whatever_the_case(api, tmp_path):
    assert api.create_repo("Spectra/model1").repo_id == "Spectra/model1"
    with pytest.raises(HfHubHTTPError) as refused:
        api.create_repo("spectra/MODEL1")
    assert refused.value.response.status_code == 409
    assert "Spectra/model1" in str(refused.value)
    # exist_ok reads the existing repo's url from the 409: the stored spelling
    assert api.create_repo("SPECTRA/Model1", exist_ok=True).repo_id == "Spectra/model1"
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="spectra/model1")
    info = api.model_info("SPECTRA/MODEL1")
    assert info.id == "Spectra/model1" and [s.rfilename for s in info.siblings] == [".gitattributes", "a.txt"]
    path = hf_hub_download("sPeCtRa/mOdEl1", "a.txt", endpoint=api.endpoint, cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == b"hello"
    assert [m.id for m in api.list_models()] == ["Spectra/model1"]
    # a new repo in an existing namespace takes the namespace's stored spelling
    assert api.create_repo("SPECTRA/model2").repo_id == "Spectra/model2"
    api.create_branch("spectra/MODEL2", branch="step1")
    assert [b.name for b in api.list_repo_refs("Spectra/model2").branches] == ["main", "step1"]
    api.delete_repo("spectra/model2")
    assert not api.repo_exists("Spectra/model2")


def test_a_store_written_before_keeps_each_exact_spelling(tmp_path):
    """A store from before this rule may hold two spellings of one name: each exact spelling keeps its own repo."""
    with LocalHub(tmp_path / "store") as hub:
        api = HfApi(endpoint=hub.url, token=False)
        api.create_repo("old/one")
        api.upload_file(path_or_fileobj=b"first", path_in_repo="x.txt", repo_id="old/one")
        api.create_repo("old/two")
        api.upload_file(path_or_fileobj=b"second", path_in_repo="y.txt", repo_id="old/two")
    models = tmp_path / "store" / "repos" / "models" / "old"
    shutil.move(models / "two", models / "ONE")  # what the old store made of `old/ONE`
    with LocalHub(tmp_path / "store") as hub:
        api = HfApi(endpoint=hub.url, token=False)
        assert "x.txt" in api.list_repo_files("old/one") and "y.txt" in api.list_repo_files("old/ONE")
        assert "x.txt" in api.list_repo_files("OLD/one")  # exact name first, then any case


def test_publish_refuses_an_org_that_differs_only_in_case(tmp_path, tokenizer, hub):
    suite = build_standin_suite(tmp_path / "suite", steps=(100,), tokenizer=tokenizer, models=["QuantLM_99M_8bit"])
    plan = build_plan(suite, org="spectra-demo", models=["QuantLM_99M_8bit"])
    publish(plan, endpoint=hub.url, limits=HubLimits.unlimited(), progress=False)
    commits = dict(hub.stats["commits"])
    with pytest.raises(ConfigError, match="--org Spectra-Demo differs only in case from the existing spectra-demo"):
        plan = build_plan(suite, org="Spectra-Demo", models=["QuantLM_99M_8bit"])
        publish(plan, endpoint=hub.url, limits=HubLimits.unlimited(), progress=False)
    assert dict(hub.stats["commits"]) == commits  # nothing published
