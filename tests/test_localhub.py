"""The local Hub (spectra_hf.hub.localhub) against the real huggingface_hub client and transformers, on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils.sha import git_hash

from spectra_hf.cli import main as cli_main
from spectra_hf.hub.localhub import Fault, LocalHub

REPO = "spectra/tiny"
WEIGHTS = bytes(range(256)) * 40  # binary, so LFS by content as well as by the *.safetensors pattern


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    (folder / "sub" / "notes.txt").write_text("hello")
    return folder


def _download(hub: LocalHub, filename: str, cache: Path, **kwargs) -> bytes:
    path = hf_hub_download(REPO, filename, endpoint=hub.url, cache_dir=cache, token=False, **kwargs)
    return Path(path).read_bytes()


def _raw(hub: LocalHub, method: str, path: str, body=None, headers: dict | None = None):
    """A request sent exactly as written (no client-side URL normalization): (status, headers, body).

    `body`: bytes, or an iterable of bytes sent with chunked transfer encoding."""
    host, port = hub.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_upload_folder_then_download_regular_and_lfs_files(hub, api, folder, tmp_path):
    assert api.create_repo(REPO).repo_id == REPO
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO  # 409 + url, accepted by exist_ok
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(REPO)
    assert conflict.value.response.status_code == 409

    info = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="first upload")
    assert len(info.oid) == 40
    assert hub.stats["requests"]["lfs_upload"] == 1  # the weights went through LFS batch + PUT
    assert hub.stats["commits"] == {REPO: 1}

    tree = {entry.path: entry for entry in api.list_repo_tree(REPO, recursive=True)}
    assert set(tree) == {".gitattributes", "config.json", "model.safetensors", "sub", "sub/notes.txt"}
    assert tree["model.safetensors"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert tree["config.json"].lfs is None and tree["config.json"].blob_id == git_hash(b'{"model_type": "llama"}')
    assert api.list_repo_files(REPO) == [".gitattributes", "config.json", "model.safetensors", "sub/notes.txt"]
    model = api.model_info(REPO)
    assert model.sha == info.oid and {s.rfilename for s in model.siblings} >= {"config.json", "sub/notes.txt"}

    cache = tmp_path / "cache"
    assert _download(hub, "model.safetensors", cache) == WEIGHTS
    assert _download(hub, "sub/notes.txt", cache) == b"hello"
    snapshot = Path(snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "snap", token=False))
    assert snapshot.name == info.oid
    assert (snapshot / "model.safetensors").read_bytes() == WEIGHTS


def test_resolve_headers_and_range_requests(hub, api, folder):
    api.create_repo(REPO)
    head = api.upload_folder(repo_id=REPO, folder_path=folder).oid

    status, headers, _ = _raw(hub, "HEAD", f"/{REPO}/resolve/main/config.json")
    assert status == 200 and headers["X-Repo-Commit"] == head
    assert headers["ETag"] == f'"{git_hash(b"""{"model_type": "llama"}""")}"'
    status, headers, _ = _raw(hub, "HEAD", f"/{REPO}/resolve/main/model.safetensors")
    assert headers["X-Linked-Size"] == str(len(WEIGHTS)) and headers["X-Linked-Etag"].strip('"') != head
    assert not any(name.lower().startswith("x-xet") for name in headers)  # downloads stay plain HTTP

    status, headers, body = _raw(
        hub, "GET", f"/{REPO}/resolve/main/model.safetensors", headers={"Range": "bytes=10-19"}
    )
    assert (status, body, headers["Content-Range"]) == (206, WEIGHTS[10:20], f"bytes 10-19/{len(WEIGHTS)}")
    status, _, body = _raw(hub, "GET", f"/{REPO}/resolve/main/model.safetensors", headers={"Range": "bytes=-5"})
    assert (status, body) == (206, WEIGHTS[-5:])
    status, headers, _ = _raw(hub, "GET", f"/{REPO}/resolve/main/config.json", headers={"Range": "bytes=999-"})
    assert status == 416 and headers["Content-Range"] == "bytes */23"


def test_identical_second_upload_makes_no_commit(hub, api, folder):
    api.create_repo(REPO)
    first = api.upload_folder(repo_id=REPO, folder_path=folder)
    hub.reset_stats()
    second = api.upload_folder(repo_id=REPO, folder_path=folder)
    assert second.oid == first.oid
    assert "commit" not in hub.stats["requests"] and "lfs_upload" not in hub.stats["requests"]
    assert len(api.list_repo_commits(REPO)) == 2  # initial commit + the first upload


def test_branches_tags_and_downloads_by_revision(hub, api, folder, tmp_path):
    api.create_repo(REPO)
    main_head = api.upload_folder(repo_id=REPO, folder_path=folder).oid
    api.create_branch(REPO, branch="step10")
    api.create_branch(REPO, branch="step10", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_branch(REPO, branch="step10")
    assert conflict.value.response.status_code == 409

    step10 = api.upload_file(path_or_fileobj=b"step 10", path_in_repo="sub/notes.txt", repo_id=REPO, revision="step10")
    api.create_tag(REPO, tag="v1", revision="step10")
    refs = api.list_repo_refs(REPO)
    assert {(b.name, b.target_commit) for b in refs.branches} == {("main", main_head), ("step10", step10.oid)}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", step10.oid)]

    cache = tmp_path / "cache"
    assert _download(hub, "sub/notes.txt", cache, revision="step10") == b"step 10"
    assert _download(hub, "sub/notes.txt", cache, revision="v1") == b"step 10"
    assert _download(hub, "sub/notes.txt", cache, revision=main_head) == b"hello"
    assert _download(hub, "sub/notes.txt", cache) == b"hello"

    api.create_branch(REPO, branch="scratch", revision="v1")
    api.delete_branch(REPO, branch="scratch")
    assert {b.name for b in api.list_repo_refs(REPO).branches} == {"main", "step10"}


def test_errors_surface_as_huggingface_hub_exceptions(hub, api, folder, tmp_path):
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=folder)
    cache = tmp_path / "cache"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("spectra/missing", "config.json", endpoint=hub.url, cache_dir=cache, token=False)
    with pytest.raises(RevisionNotFoundError):
        _download(hub, "config.json", cache, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        _download(hub, "adapter_config.json", cache)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("spectra/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="no-such-folder"))
    with pytest.raises(RevisionNotFoundError):  # commits go to existing branches only
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, revision="no-such-branch")
    status, _, body = _raw(hub, "GET", f"/api/models/{REPO}/xet-write-token/main")  # what hf_xet would ask for
    assert status == 501 and "HF_HUB_DISABLE_XET=1" in json.loads(body)["error"]


def test_commit_deletions_and_parent_commit_check(hub, api, folder):
    api.create_repo(REPO)
    head = api.upload_folder(repo_id=REPO, folder_path=folder).oid
    api.upload_file(path_or_fileobj=b"later", path_in_repo="later.txt", repo_id=REPO)
    stale = [CommitOperationAdd("late.txt", b"stale")]
    with pytest.raises(HfHubHTTPError) as refused:
        api.create_commit(REPO, operations=stale, commit_message="stale", parent_commit=head)
    assert refused.value.response.status_code == 412

    deletions = [CommitOperationDelete("config.json"), CommitOperationDelete("sub/")]
    api.create_commit(REPO, operations=deletions, commit_message="delete")
    assert api.list_repo_files(REPO) == [".gitattributes", "later.txt", "model.safetensors"]
    with pytest.raises(EntryNotFoundError):
        api.create_commit(REPO, operations=[CommitOperationDelete("config.json")], commit_message="again")


def test_tree_listing_is_paginated_with_link_headers(tmp_path):
    with LocalHub(tmp_path / "hub", tree_page_size=2) as hub:
        api = HfApi(endpoint=hub.url, token=False)
        api.create_repo(REPO)
        operations = [CommitOperationAdd(f"d/f{i}.txt", str(i).encode()) for i in range(5)]
        api.create_commit(REPO, operations=operations, commit_message="five files")
        hub.reset_stats()
        paths = [entry.path for entry in api.list_repo_tree(REPO, recursive=True)]
        assert paths == [".gitattributes", "d"] + [f"d/f{i}.txt" for i in range(5)]
        assert hub.stats["requests"]["tree"] == 4  # 7 entries, 2 per page


def test_everything_survives_a_restart(tmp_path, folder):
    root = tmp_path / "hub"
    with LocalHub(root) as hub:
        api = HfApi(endpoint=hub.url, token=False)
        api.create_repo(REPO)
        api.create_repo("spectra/data", repo_type="dataset")
        api.upload_folder(repo_id=REPO, folder_path=folder)
        api.create_branch(REPO, branch="step10")
        api.create_tag(REPO, tag="v1")
        slug = api.create_collection("Spectra", namespace="spectra").slug
        before = api.list_repo_refs(REPO)
    with LocalHub(root) as hub:
        api = HfApi(endpoint=hub.url, token=False)
        assert api.list_repo_refs(REPO) == before
        assert api.repo_exists("spectra/data", repo_type="dataset")
        assert _download(hub, "model.safetensors", tmp_path / "cache", revision="v1") == WEIGHTS
        assert api.get_collection(slug).title == "Spectra"
        api.upload_file(path_or_fileobj=b"more", path_in_repo="more.txt", repo_id=REPO, revision="step10")
        assert len(api.list_repo_commits(REPO, revision="step10")) == 3


def test_token_is_required_and_never_logged(tmp_path):
    lines: list[str] = []
    with LocalHub(tmp_path / "hub", token="s3cret-token", log=lines.append) as hub:
        with pytest.raises(HfHubHTTPError) as missing:
            HfApi(endpoint=hub.url, token=False).create_repo(REPO)
        assert missing.value.response.status_code == 401 and "Authorization required" in str(missing.value)
        with pytest.raises(HfHubHTTPError) as wrong:
            HfApi(endpoint=hub.url, token="not-it").model_info(REPO)
        assert wrong.value.response.status_code == 401 and "Invalid credentials" in str(wrong.value)

        api = HfApi(endpoint=hub.url, token="s3cret-token")
        api.create_repo(REPO)
        api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="model.safetensors", repo_id=REPO)  # signed LFS PUT
        assert api.whoami()["name"] == "local"
        path = hf_hub_download(
            REPO, "model.safetensors", endpoint=hub.url, cache_dir=tmp_path / "c", token="s3cret-token"
        )
        assert Path(path).read_bytes() == WEIGHTS
    assert lines and not any("s3cret" in line for line in lines)


def test_bad_names_and_path_traversal_are_refused(hub, api):
    api.create_repo(REPO)
    for name in ("a--b", "..x", "-x", "x-", "x.git", "a" * 97, "sp ace"):
        body = json.dumps({"name": name, "organization": "spectra"}).encode()
        status, _, answer = _raw(hub, "POST", "/api/repos/create", body, {"Content-Type": "application/json"})
        assert status == 400 and repr(name) in json.loads(answer)["error"], name
    for path in (
        f"/{REPO}/resolve/main/../../etc/passwd",
        f"/{REPO}/resolve/main/%2E%2E%2Fsecret",
        f"/{REPO}/resolve/..%2F..%2Fmain/config.json",
        f"/api/models/{REPO}/tree/main/%2Fetc",
        "/api/models/..%2F..%2Fetc/passwd",
    ):
        status, _, answer = _raw(hub, "GET", path)
        assert status == 400 and "Invalid" in json.loads(answer)["error"], path
    line = {"key": "file", "value": {"path": "../evil.txt", "content": "eA==", "encoding": "base64"}}
    payload = b"\n".join(json.dumps(item).encode() for item in ({"key": "header", "value": {"summary": "x"}}, line))
    status, _, answer = _raw(hub, "POST", f"/api/models/{REPO}/commit/main", payload)
    assert status == 400 and "../evil.txt" in json.loads(answer)["error"]
    with pytest.raises(HfHubHTTPError) as refused:
        api.create_branch(REPO, branch="../escape")
    assert refused.value.response.status_code == 400
    assert not (hub.root.parent / "escape").exists() and not (hub.root.parent / "evil.txt").exists()


def test_lfs_upload_urls_are_signed_and_content_is_verified(hub, api):
    api.create_repo(REPO)
    data = b"chunked upload"
    oid = hashlib.sha256(data).hexdigest()
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]}
    status, _, body = _raw(hub, "POST", f"/{REPO}.git/info/lfs/objects/batch", json.dumps(batch).encode())
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"].removeprefix(hub.url)
    assert status == 200 and "sig=" in href
    assert _raw(hub, "PUT", href.replace("sig=", "sig=0"), data)[0] == 403
    assert _raw(hub, "PUT", href, b"other bytes!!!")[0] == 400  # sha256 and size must match the announced ones
    assert _raw(hub, "PUT", href, iter([data[:7], data[7:]]), {"Transfer-Encoding": "chunked"})[0] == 200
    status, _, body = _raw(hub, "POST", f"/{REPO}.git/info/lfs/objects/batch", json.dumps(batch).encode())
    assert "actions" not in json.loads(body)["objects"][0]  # stored now: nothing left to upload


def test_injected_429_and_5xx_are_retried_where_the_client_retries(hub, api):
    api.create_repo(REPO)
    preupload = hub.inject("preupload", 429, first=1, retry_after=0)
    batch = hub.inject("lfs", 503, first=1, retry_after=0)
    put = hub.inject("lfs_upload", 500, first=1)
    api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="model.safetensors", repo_id=REPO)
    assert (preupload.injected, batch.injected, put.injected) == (1, 1, 1)
    assert hub.stats["requests"]["preupload"] == 2 and hub.stats["faults"]["lfs_upload"] == 1

    hub.inject("commit", 429, first=1, retry_after=0)
    with pytest.raises(HfHubHTTPError) as throttled:  # huggingface_hub does not retry plain commits
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert throttled.value.response.status_code == 429
    assert throttled.value.response.headers["Retry-After"] == "0"
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert hub.stats["commits"] == {REPO: 2}
    hub.inject("branch", 429, first=1, retry_after=0)
    with pytest.raises(HfHubHTTPError):  # nor branch creation
        api.create_branch(REPO, branch="step1")
    api.create_branch(REPO, branch="step1")


def test_fault_schedules_are_deterministic():
    every = Fault("commit", 503, every=3)
    assert [every.hit() for _ in range(7)] == [True, False, False, True, False, False, True]
    parsed = Fault.parse("branch:429:first=2:retry_after=1:repo=spectra/tiny")
    assert (parsed.kind, parsed.status, parsed.first, parsed.repo) == ("branch", 429, 2, "spectra/tiny")
    assert [parsed.hit() for _ in range(3)] == [True, True, False]
    for spec in ("nope:429:first=1", "commit:200:first=1", "commit:429", "commit:429:first=1:every=2"):
        with pytest.raises(ValueError):
            Fault.parse(spec)


def test_collections(hub, api):
    api.create_repo(REPO)
    collection = api.create_collection("Spectra suite", namespace="spectra", description="all models")
    assert api.create_collection("Spectra suite", namespace="spectra", exists_ok=True).slug == collection.slug
    api.add_collection_item(collection.slug, REPO, "model", note="tiny")
    api.add_collection_item(collection.slug, REPO, "model", exists_ok=True)
    with pytest.raises(RepositoryNotFoundError):
        api.add_collection_item(collection.slug, "spectra/missing", "model")
    fetched = api.get_collection(collection.slug)
    assert [(item.item_id, item.item_type, item.note) for item in fetched.items] == [(REPO, "model", "tiny")]
    assert [c.slug for c in api.list_collections(owner="spectra")] == [collection.slug]


def test_stats_endpoint_and_validate_yaml(hub, api):
    api.create_repo(REPO)
    card = "---\nlicense: apache-2.0\ntags: [ternary]\n---\n# Tiny\n"
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=REPO)
    assert api.model_info(REPO).card_data.license == "apache-2.0"
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=b"---\nlicense: [unclosed\n---\n", path_in_repo="README.md", repo_id=REPO)
    status, _, body = _raw(hub, "GET", "/api/_local/stats")
    stats = json.loads(body)
    assert status == 200 and stats["requests"]["validate_yaml"] == 2 and stats["commits"] == {REPO: 1}


def test_transformers_loads_a_checkpoint_branch(local_hub, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "model")
    api = HfApi()  # HF_ENDPOINT, set by conftest before huggingface_hub was imported, points at local_hub
    repo = "spectra/tiny-llama"
    api.create_repo(repo, exist_ok=True)
    api.create_branch(repo, branch="step10", exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=tmp_path / "model", revision="step10")

    cache = tmp_path / "cache"
    assert AutoConfig.from_pretrained(repo, revision="step10", cache_dir=cache).num_hidden_layers == 2
    loaded = AutoModelForCausalLM.from_pretrained(repo, revision="step10", cache_dir=cache)
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
    with pytest.raises((OSError, ValueError), match=repo):  # main has no config.json: the revision made it work
        AutoConfig.from_pretrained(repo, cache_dir=cache)


def test_cli_serve_prints_the_url_and_stops_on_ctrl_c(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "spectra_hf.cli", "hub", "serve", "--root", str(tmp_path / "hub"), "--port", "0",
               "--quiet", "--fault", "commit:429:first=1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first_line = server.stdout.readline()
        url = first_line.split(" at ")[-1].strip()
        assert url.startswith("http://127.0.0.1:"), first_line
        assert "HF_HUB_DISABLE_XET=1" in server.stdout.readline()
        api = HfApi(endpoint=url, token=False)
        api.create_repo(REPO)
        with pytest.raises(HfHubHTTPError):  # the --fault given on the command line
            api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    assert "stopped" in out


def test_cli_refuses_bad_options_with_one_line(tmp_path, capsys):
    assert cli_main(["hub", "serve", "--root", str(tmp_path), "--fault", "commit:429"]) == 2
    assert "--fault" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli_main(["hub", "serve", "--root", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
