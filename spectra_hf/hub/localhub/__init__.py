"""A local server that speaks the Hugging Face Hub HTTP protocol, for tests, benchmarks and offline publishing.

The real huggingface_hub (2.4) client and transformers (5.23) work against it unmodified: repos (model, dataset),
branches, tags, refs, preupload + LFS batch + NDJSON commits (upload_file, upload_folder, create_commit with
deletions and parent_commit), repo info with the metadata the Hub derives (pipeline_tag, library_name, tags, config,
safetensors parameter counts), model and dataset listing with filters, repo settings, move and super-squash, tree
listings, hf_hub_download / snapshot_download with Range support,
`from_pretrained(repo, revision=...)`, collections, whoami. Storage is content-addressed under one root directory
and survives restarts; serving uses only the standard library.

    from spectra_hf.hub.localhub import LocalHub

    with LocalHub("/tmp/hub", port=0, token=None) as hub:
        api = HfApi(endpoint=hub.url)
        hub.inject("commit", 429, first=1, retry_after=1)   # the next commit answers 429 + Retry-After: 1
        ...
        hub.stats   # {"requests": {"commit": 3, ...}, "faults": {...}, "commits": {"org/name": 2}, ...}

Command line: `spectra-hf hub serve --root DIR --port 8080 [--host 127.0.0.1] [--token-file FILE] [--fault SPEC]
[--max-body-mb 64] [--public-url URL]`.

Pointing clients at it
----------------------
huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET once, when it is first imported, so:

* Other processes: run them with `HF_ENDPOINT=<hub.url> HF_HUB_DISABLE_XET=1`. Without HF_HUB_DISABLE_XET the
  installed hf_xet makes the client ask for xet tokens for LFS files, which this server does not serve.
* Tests: set both variables at the top of tests/conftest.py, before anything imports huggingface_hub or
  transformers (spectra_hf itself imports transformers), on a port reserved there, and start the session's LocalHub
  on that port; then `HfApi()`, `hf_hub_download` and `AutoModel*.from_pretrained(repo, revision=...)` all reach it.
  `HfApi(endpoint=hub.url)`, `hf_hub_download(..., endpoint=hub.url)` and `snapshot_download(..., endpoint=hub.url)`
  reach any other LocalHub in the same process.

Faults and counters
-------------------
`hub.inject(kind, status=429|5xx, first=N | every=K, retry_after=S, repo=None)` fails requests of one route kind
(`ROUTE_KINDS`: branch, collection, commit, commits, create_repo, delete_repo, lfs, lfs_upload, paths_info,
preupload, refs, repo_info, resolve, tag, tree, validate_yaml, whoami, xet) deterministically; `every=K` fails the 1st,
(1+K)th, ... matching request. `hub.stats` (also `GET /api/_local/stats`) counts requests and injected faults per
route kind and commits per repo; `hub.reset_stats()` starts over.

What huggingface_hub 2.4 retries on 429/5xx (up to 5 times, waiting Retry-After + 1 s, else 1, 2, 4, 8 s): preupload,
the LFS batch and the LFS PUT, paginated listings (tree, commits, collections), and HEAD/GET /resolve/ in
hf_hub_download when the file is not cached yet. Not retried, so a fault there surfaces as HfHubHTTPError:
create_repo, create_branch, create_tag, create_collection, repo info, refs, and the commit itself (create_commit,
upload_file, upload_folder with HF_HUB_DISABLE_XET=1).

Access model
------------
* No token: single-user. Every client acts as `user` and reads and writes everything, private repos included;
  `LocalHub.access` (printed by `hub serve` at start) says so, and `hub serve` refuses to bind a non-loopback
  address this way.
* `token=` / `tokens={token: user}` (`hub serve --token-file FILE` or SPECTRA_HUB_TOKEN): writes need a valid
  `Authorization: Bearer` token (401 otherwise; a wrong token is always 401); private repos answer 404 RepoNotFound
  to requests without one; anonymous requests may read public repos and collections. The LFS PUT carries no token:
  its URL is signed by the server for one (sha256, size, repo).
* LFS objects are scoped to a repo: an `lfsFile` in a commit must name a blob uploaded to (or already committed in)
  that repo, so knowing another repo's sha256 gives no access to its content. Blob storage stays shared.

Integrity and limits: blobs are checked against their sha256 when written and before they are served or offered as
stored (cached per (size, mtime, ctime, inode)); a corrupt one answers 409 CorruptContent and is moved to
`blobs/corrupt/`, and uploading the good bytes again repairs it. API bodies are capped (`max_body_bytes`, 413),
inline commit files must be under `lfs_threshold` (10 MB, the Hub's rule), malformed bodies are 400s, and a refused
commit stores nothing. URLs handed out are built from the server's own address (`public_url`), never the Host
header. Repo ids, revisions and paths are validated (400 with a message, never a path on disk); tokens are never
logged. Not served: git smart HTTP, xet storage, pull requests, gated repos.
"""

from .faults import Fault
from .routes import ROUTE_KINDS
from .server import LocalHub

__all__ = ["ROUTE_KINDS", "Fault", "LocalHub"]
