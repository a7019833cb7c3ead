"""The local Hub as a server people run: content integrity, malformed requests, body limits, access, tokens, URLs.

Every request here goes over a real socket to a LocalHub on 127.0.0.1, sent by the real huggingface_hub client or
written byte for byte (http.client / a raw socket) the way a broken or hostile client would send it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from spectra_hf.hub.localhub import LocalHub

REPO = "spectra/tiny"
WEIGHTS = bytes(range(256)) * 64  # binary: goes through LFS
CONFIG = b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}'


def _address(hub: LocalHub) -> tuple[str, int]:
    host, port = hub.url.removeprefix("http://").split(":")
    return host, int(port)


def _request(hub: LocalHub, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request sent with http.client (no client-side normalization)."""
    connection = http.client.HTTPConnection(*_address(hub), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _raw_exchange(hub: LocalHub, raw: bytes, *, check_close: bool = False) -> tuple[int, bytes, bool | None]:
    """Send `raw` bytes as they are; (status, whole answer, with `check_close`: whether the server closed the
    connection after answering)."""
    with socket.create_connection(_address(hub), timeout=10) as sock:
        sock.sendall(raw)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        lengths = (line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        length = int(next(lengths, b"0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        if not check_close:
            return int(head.split(b" ")[1]), head + b"\r\n\r\n" + rest, None
        sock.settimeout(2)
        try:
            closed = sock.recv(1) == b""  # EOF: the server hung up instead of waiting for more from us
        except TimeoutError:
            closed = False
    return int(head.split(b" ")[1]), head + b"\r\n\r\n" + rest, closed


def _commit_lines(*lines: dict) -> bytes:
    return b"\n".join(json.dumps(line).encode() for line in lines)


def _header(summary: str = "x") -> dict:
    return {"key": "header", "value": {"summary": summary}}


def _inline(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}


def _stored_blobs(hub: LocalHub) -> set[str]:
    return {path.parent.name + path.name for path in (hub.root / "blobs" / "sha256").glob("*/*")}


def _flip_bytes(path: Path) -> None:
    """Overwrite bytes in the middle of a file in place, keeping its size (disk damage, a careless edit)."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        original = handle.read(4)
        handle.seek(size // 2)
        handle.write(bytes(b ^ 0xFF for b in original))
    assert path.stat().st_size == size


# -- content integrity ------------------------------------------------------------------------------------------
def test_a_corrupt_blob_is_never_served_and_re_uploading_repairs_it(hub, api, tmp_path):
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="model.safetensors", repo_id=REPO)
    api.upload_file(path_or_fileobj=CONFIG, path_in_repo="config.json", repo_id=REPO)
    for data in (WEIGHTS, CONFIG):
        _flip_bytes(hub.context.store.blobs.path(hashlib.sha256(data).hexdigest()))

    for name in ("model.safetensors", "config.json"):
        for method in ("GET", "HEAD"):
            status, headers, _ = _request(hub, method, f"/{REPO}/resolve/main/{name}")
            assert status == 409 and headers["X-Error-Code"] == "CorruptContent", (method, name)
        status, _, _ = _request(hub, "GET", f"/{REPO}/resolve/main/{name}", headers={"Range": "bytes=0-3"})
        assert status == 409  # not even part of it
    with pytest.raises(LocalEntryNotFoundError) as refused:  # how hf_hub_download reports any failed HEAD
        hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, cache_dir=tmp_path / "c1", token=False)
    assert "corrupt" in str(refused.value.__cause__)

    # The client re-offers the same content: the server must ask for it again instead of answering "have it".
    hub.reset_stats()
    api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="model.safetensors", repo_id=REPO)
    api.upload_file(path_or_fileobj=CONFIG, path_in_repo="config.json", repo_id=REPO)
    assert hub.stats["requests"]["lfs_upload"] == 1
    cache = tmp_path / "c2"
    weights = hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, cache_dir=cache, token=False)
    assert Path(weights).read_bytes() == WEIGHTS
    config = hf_hub_download(REPO, "config.json", endpoint=hub.url, cache_dir=cache, token=False)
    assert Path(config).read_bytes() == CONFIG
    assert len(list((hub.root / "blobs" / "corrupt").iterdir())) == 2  # the bad copies are kept aside, not served


def test_a_verified_blob_is_not_re_hashed_on_every_download(hub, api):
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="model.safetensors", repo_id=REPO)
    blobs = hub.context.store.blobs
    before = blobs.rehashed
    for _ in range(3):
        assert _request(hub, "GET", f"/{REPO}/resolve/main/model.safetensors")[2] == WEIGHTS
    assert blobs.rehashed == before  # hashed on the way in; unchanged since


def test_a_blob_damaged_before_a_restart_is_caught_by_the_next_server(tmp_path):
    with LocalHub(tmp_path / "hub") as hub:
        HfApi(endpoint=hub.url, token=False).create_repo(REPO)
        HfApi(endpoint=hub.url, token=False).upload_file(path_or_fileobj=WEIGHTS, path_in_repo="w.bin", repo_id=REPO)
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    _flip_bytes(tmp_path / "hub" / "blobs" / "sha256" / digest[:2] / digest[2:])
    with LocalHub(tmp_path / "hub") as hub:
        assert _request(hub, "GET", f"/{REPO}/resolve/main/w.bin")[0] == 409


# -- malformed requests: 400/413, never a 500, a dropped connection or a held thread -----------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/repos/create", b'["a", "list"]'),
        ("/api/repos/create", b'{"name": 123, "organization": "spectra"}'),
        ("/api/repos/create", b'{"name": "x", "organization": ["spectra"]}'),
        ("/api/repos/create", b"[" * 100_000 + b"]" * 100_000),
        ("/api/repos/create", b"\xff\xfe not json"),
        (f"/api/models/{REPO}/preupload/main", b'{"files": [{"path": 1, "size": 2}]}'),
        (f"/api/models/{REPO}/preupload/main", b'{"files": [{"path": "a", "size": 2, "sample": "***"}]}'),
        (f"/api/models/{REPO}/preupload/main", b'{"files": ["a"]}'),
        (f"/{REPO}.git/info/lfs/objects/batch", b'{"operation": "upload", "objects": "abc"}'),
        (f"/{REPO}.git/info/lfs/objects/batch", b'{"operation": "upload", "objects": [7]}'),
        (f"/api/models/{REPO}/branch/b1", b'{"startingPoint": 5}'),
        (f"/api/models/{REPO}/tag/main", b'{"tag": {"a": 1}}'),
        ("/api/collections", b'{"title": "t", "namespace": 5}'),
        (
            f"/api/models/{REPO}/commit/main",
            _commit_lines(_header(), {"key": "file", "value": {"path": "a.txt", "content": "!!not base64!!"}}),
        ),
        (f"/api/models/{REPO}/commit/main", _commit_lines(_header(), {"key": "file", "value": ["a"]})),
        (
            f"/api/models/{REPO}/commit/main",
            _commit_lines(_header(), {"key": "lfsFile", "value": {"path": "a", "oid": 5}}),
        ),
        (
            f"/api/models/{REPO}/commit/main",
            _commit_lines({"key": "header", "value": {"summary": "x", "description": 3}}),
        ),
        (f"/api/models/{REPO}/commit/main", b"[" * 100_000 + b"]" * 100_000),
        ("/api/repos/move", b'{"fromRepo": 1, "toRepo": "a/b"}'),
    ],
)
def test_malformed_bodies_are_a_400(hub, api, path, body):
    api.create_repo(REPO)
    status, _, answer = _request(hub, "POST", path, body, {"Content-Type": "application/json"})
    assert status == 400, answer
    assert json.loads(answer)["error"]
    assert api.repo_exists(REPO)  # and the server goes on serving


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1e3", b"\xd9\xa3"])
def test_a_bad_content_length_is_a_400_and_the_connection_closes(hub, length):
    raw = b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{}"
    status, answer, closed = _raw_exchange(hub, raw, check_close=True)
    assert status == 400 and b"Content-Length" in answer
    assert closed  # the body's end is unknowable: the server hangs up instead of waiting on the client


def test_bad_chunk_framing_is_a_400(hub, api):
    api.create_repo(REPO)
    raw = (f"POST /api/models/{REPO}/commit/main HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           "zz\r\nabc\r\n0\r\n\r\n").encode()
    status, _, closed = _raw_exchange(hub, raw, check_close=True)
    assert status == 400 and closed


def test_body_cap_answers_413_after_reading_the_body_and_keeps_serving(tmp_path):
    with LocalHub(tmp_path / "hub", max_body_bytes=1 << 20) as hub:
        api = HfApi(endpoint=hub.url, token=False)
        api.create_repo(REPO)
        big = _commit_lines(_header(), _inline("big.txt", b"a" * (2 << 20)))
        status, _, answer = _request(hub, "POST", f"/api/models/{REPO}/commit/main", big)
        assert status == 413 and "--max-body-mb" in json.loads(answer)["error"]
        chunked = http.client.HTTPConnection(*_address(hub), timeout=10)
        chunked.request("POST", f"/api/models/{REPO}/commit/main", body=iter([big[: 1 << 19]] * 4), encode_chunked=True)
        assert chunked.getresponse().status == 413
        chunked.close()
        # LFS uploads are files, bounded by their own announced size rather than the API cap.
        api.upload_file(path_or_fileobj=WEIGHTS * 128, path_in_repo="model.safetensors", repo_id=REPO)
        assert len(api.list_repo_files(REPO)) == 2


def test_inline_files_of_10_mb_and_more_must_go_through_lfs(hub, api):
    api.create_repo(REPO)
    ten_mb = b"x" * (10 * 1024 * 1024)
    big = _commit_lines(_header(), _inline("big.txt", ten_mb))
    status, _, answer = _request(hub, "POST", f"/api/models/{REPO}/commit/main", big)
    assert status == 413 and "LFS" in json.loads(answer)["error"]
    api.upload_file(path_or_fileobj=ten_mb, path_in_repo="big.txt", repo_id=REPO)  # the client routes it through LFS
    served = _request(hub, "GET", f"/{REPO}/resolve/main/big.txt")[2]
    assert hashlib.sha256(served).digest() == hashlib.sha256(ten_mb).digest()


def test_a_refused_commit_leaves_no_blob_behind(hub, api):
    api.create_repo(REPO)
    before = _stored_blobs(hub)
    orphan = b"content of a commit that fails"
    refused = [
        _commit_lines(_header(), _inline("a.txt", orphan), {"key": "nonsense", "value": {}}),
        _commit_lines(_header(), _inline("a.txt", orphan), {"key": "deletedFile", "value": {"path": "missing.txt"}}),
        _commit_lines({"key": "header", "value": {"summary": "x", "parentCommit": "0" * 40}}, _inline("a.txt", orphan)),
    ]
    for body in refused:
        assert _request(hub, "POST", f"/api/models/{REPO}/commit/main", body)[0] in (400, 404, 412)
    assert _stored_blobs(hub) == before
    accepted = _commit_lines(_header(), _inline("a.txt", orphan))
    assert _request(hub, "POST", f"/api/models/{REPO}/commit/main", accepted)[0] == 200
    assert _stored_blobs(hub) == before | {hashlib.sha256(orphan).hexdigest()}


# -- access model ------------------------------------------------------------------------------------------------
def test_with_a_token_private_repos_are_hidden_and_writes_need_it(tmp_path):
    with LocalHub(tmp_path / "hub", token="owner-secret") as hub:
        owner = HfApi(endpoint=hub.url, token="owner-secret")
        anonymous = HfApi(endpoint=hub.url, token=False)
        owner.create_repo("spectra/open")
        owner.create_repo("spectra/closed", private=True)
        for repo in ("spectra/open", "spectra/closed"):
            owner.upload_file(path_or_fileobj=CONFIG, path_in_repo="config.json", repo_id=repo)

        assert anonymous.model_info("spectra/open").id == "spectra/open"
        with pytest.raises(RepositoryNotFoundError):
            anonymous.model_info("spectra/closed")
        assert _request(hub, "GET", "/spectra/closed/resolve/main/config.json")[0] == 404
        assert [m.id for m in anonymous.list_models(author="spectra")] == ["spectra/open"]
        assert sorted(m.id for m in owner.list_models(author="spectra")) == ["spectra/closed", "spectra/open"]
        assert owner.model_info("spectra/closed").private is True
        with pytest.raises(HfHubHTTPError) as refused:
            anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="spectra/open")
        assert refused.value.response.status_code == 401
        with pytest.raises(HfHubHTTPError):
            anonymous.create_repo("spectra/new")
        assert "single-user" not in hub.access


def test_without_a_token_the_server_says_it_is_single_user(hub):
    assert "single-user" in hub.access and "private" in hub.access


@pytest.mark.parametrize("token", [None, "owner-secret"])
def test_a_commit_cannot_name_another_repos_lfs_object(tmp_path, token):
    with LocalHub(tmp_path / "hub", token=token) as hub:
        api = HfApi(endpoint=hub.url, token=token or False)
        api.create_repo("spectra/private-a", private=True)
        api.create_repo("spectra/b")
        api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="secret.safetensors", repo_id="spectra/private-a")
        oid = hashlib.sha256(WEIGHTS).hexdigest()
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        stolen = _commit_lines(
            _header(),
            {"key": "lfsFile", "value": {"path": "copy.bin", "algo": "sha256", "oid": oid, "size": len(WEIGHTS)}},
        )
        status, _, answer = _request(hub, "POST", "/api/models/spectra/b/commit/main", stolen, auth)
        assert status == 400 and "never uploaded to spectra/b" in json.loads(answer)["error"]
        batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(WEIGHTS)}]}
        batch_url = "/spectra/b.git/info/lfs/objects/batch"
        status, _, answer = _request(hub, "POST", batch_url, json.dumps(batch).encode(), auth)
        assert "upload" in json.loads(answer)["objects"][0]["actions"]  # proving possession means uploading the bytes
        # Uploading the same content to b itself works, and the blob is still stored once.
        api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="copy.bin", repo_id="spectra/b")
        assert _request(hub, "GET", "/spectra/b/resolve/main/copy.bin", headers=auth)[2] == WEIGHTS


# -- tokens outside argv, URLs from the server's own address ---------------------------------------------------
def _serve(tmp_path: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    command = [sys.executable, "-m", "spectra_hf.cli", "hub", "serve", "--root", str(tmp_path / "hub"),
               "--port", "0", "--quiet", *extra]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    lines = [server.stdout.readline() for _ in range(3)]
    url = lines[0].split(" at ")[-1].strip()
    assert url.startswith("http://127.0.0.1:"), [*lines, server.stderr.read() if server.poll() is not None else ""]
    return server, url, lines


@pytest.mark.parametrize("how", ["env", "file"])
def test_cli_token_from_the_environment_or_a_file(tmp_path, how):
    secret = "tok-from-" + how
    (tmp_path / "token").write_text(secret + "\n")
    if how == "file":
        extra, env = ("--token-file", str(tmp_path / "token")), None
    else:
        extra, env = (), {"SPECTRA_HUB_TOKEN": secret}
    server, url, lines = _serve(tmp_path, *extra, env=env)
    try:
        assert secret not in " ".join(server.args)
        assert "need a token" in lines[2]
        with pytest.raises(HfHubHTTPError) as refused:
            HfApi(endpoint=url, token=False).create_repo(REPO)
        assert refused.value.response.status_code == 401
        HfApi(endpoint=url, token=secret).create_repo(REPO)
    finally:
        server.terminate()
        server.communicate(timeout=20)


def test_cli_refuses_a_tokenless_server_on_a_public_address(tmp_path):
    command = [sys.executable, "-m", "spectra_hf.cli", "hub", "serve", "--root", str(tmp_path / "hub"),
               "--host", "0.0.0.0"]
    env = {**os.environ, "SPECTRA_HUB_TOKEN": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "--token-file" in done.stderr


def test_urls_are_built_from_the_servers_address_not_the_host_header(tmp_path):
    with LocalHub(tmp_path / "hub", tree_page_size=1) as hub:
        api = HfApi(endpoint=hub.url, token=False)
        api.create_repo(REPO)
        api.upload_file(path_or_fileobj=CONFIG, path_in_repo="config.json", repo_id=REPO)
        batch = json.dumps({"operation": "upload", "objects": [{"oid": "a" * 64, "size": 3}]}).encode()
        for host in (b"evil.example", b"evil.example\r\n X-Injected: 1", b"a b\tc"):
            raw = (b"GET /api/models/" + REPO.encode() + b"/tree/main HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            status, answer, _ = _raw_exchange(hub, raw)
            head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
            link = next(line for line in head.split("\r\n") if line.lower().startswith("link:"))
            assert status == 200 and link.startswith(f"Link: <{hub.url}/api/models/{REPO}/tree/main?"), link
            assert "evil" not in head and "X-Injected" not in head
            raw = (b"POST /" + REPO.encode() + b".git/info/lfs/objects/batch HTTP/1.1\r\nHost: " + host
                   + b"\r\nContent-Length: " + str(len(batch)).encode() + b"\r\n\r\n" + batch)
            status, answer, _ = _raw_exchange(hub, raw)
            href = json.loads(answer.partition(b"\r\n\r\n")[2])["objects"][0]["actions"]["upload"]["href"]
            assert status == 200 and href.startswith(f"{hub.url}/api/_local/lfs/")
    with LocalHub(tmp_path / "hub", public_url="https://hub.example.org/") as hub:
        raw = (b"POST /" + REPO.encode() + b".git/info/lfs/objects/batch HTTP/1.1\r\nHost: evil\r\nContent-Length: "
               + str(len(batch)).encode() + b"\r\n\r\n" + batch)
        status, answer, _ = _raw_exchange(hub, raw)
        assert b'"href": "https://hub.example.org/api/_local/lfs/' in answer


# -- hub serve stays light ---------------------------------------------------------------------------------------
def test_hub_serve_imports_neither_torch_nor_transformers(tmp_path):
    """The installed `spectra-hf hub serve` reports, from inside the serving process, which heavy modules it loaded."""
    import urllib.request

    command = [str(Path(sys.executable).with_name("spectra-hf")), "hub", "serve", "--root", str(tmp_path / "hub"),
               "--port", "0", "--quiet"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = server.stdout.readline().split(" at ")[-1].strip()
        with urllib.request.urlopen(f"{url}/api/_local/stats", timeout=30) as answer:
            process = json.loads(answer.read())["process"]
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert process["pid"] == server.pid
    assert process["heavy_modules"] == []


def test_the_local_hub_modules_import_neither_torch_nor_transformers():
    """The server's own code, loaded without running spectra_hf/__init__.py (whatever that imports), stays light."""
    package = Path(__file__).resolve().parents[1] / "spectra_hf"
    code = (
        "import sys, types\n"
        f"for name, path in (('spectra_hf', {str(package)!r}), ('spectra_hf.hub', {str(package / 'hub')!r})):\n"
        "    module = types.ModuleType(name); module.__path__ = [path]; sys.modules[name] = module\n"
        "import spectra_hf.hub.localhub, spectra_hf.commands.hub\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
