"""Publishing a suite plan to the Hub (or a local Hub) so that it finishes: idempotent, resumable, paced, verified.

Every branch is written by exactly one commit that makes it equal to the plan (changed files added, stale files
deleted), computed against the branch's remote tree just before committing. Hence:

- a re-run finds nothing to change and makes no commit (no empty commits);
- a run stopped at any point (crash, Ctrl-C, quota) leaves each branch complete, absent, or stale, and the next
  run completes exactly the branches that are not complete;
- a retried commit re-reads the tree first, so a commit that reached the server before its answer was lost is not
  made twice.

The token comes from `token=`, else HF_TOKEN or the saved login (huggingface_hub's usual sources); it is never
written to logs, cards or error messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import (
    are_progress_bars_disabled,
    build_hf_headers,
    disable_progress_bars,
    enable_progress_bars,
    get_session,
    hf_raise_for_status,
)
from tqdm.auto import tqdm
from transformers.utils import logging

from spectra_hf.errors import CheckpointError, ConfigError, HubError, SpectraError
from spectra_hf.hub.localhub.server import is_loopback_host
from spectra_hf.hub.pacing import HubLimits, Pacer
from spectra_hf.hub.plan import STAGING_DIR, BranchPlan, PlanFile, PublishPlan, RepoPlan

logger = logging.get_logger(__name__)

HASH_CACHE = "hashes.json"  # under SUITE_DIR/.publish-staging
VERIFY_MODES = ("none", "listing", "sample", "full")
DEFAULT_SAMPLE_BYTES = 2 * 1024**3  # content downloaded by `verify="sample"`, spread at random over the plan

_KEEP_REMOTE = {".gitattributes"}  # created by the Hub with the repo; never ours to delete
_MISSING_SHOWN = 10


@dataclass
class PublishReport:
    """What a publish run did. `commits == 0` on a run that found everything already published."""

    endpoint: str
    repos: int = 0
    branches: int = 0
    repos_created: int = 0
    branches_created: int = 0
    commits: int = 0
    files_uploaded: int = 0
    files_deleted: int = 0
    bytes_uploaded: int = 0
    collection_items_added: int = 0
    retries: int = 0
    waited_s: float = 0.0
    seconds: float = 0.0
    verified: bool = False
    verify_mode: str = "none"  # what `verified` means: listing, sample or full (see `publish`)
    files_verified: int = 0  # files whose content was downloaded and hashed
    bytes_verified: int = 0
    files_repaired: int = 0  # files whose published content differed and were uploaded again
    loaded: list[str] = field(default_factory=list)

    def summary(self) -> str:
        checked = ""
        if self.verified:
            checked = f", verified ({self.verify_mode}"
            if self.verify_mode != "listing":
                checked += f": {self.files_verified} files, {self.bytes_verified} bytes hashed"
            checked += f", {self.files_repaired} repaired)" if self.files_repaired else ")"
        return (
            f"{self.repos} repos, {self.branches} branches: {self.repos_created} repos and {self.branches_created} "
            f"branches created, {self.commits} commits ({self.files_uploaded} files, {self.bytes_uploaded} bytes "
            f"uploaded, {self.files_deleted} deleted), {self.collection_items_added} collection items added, "
            f"{self.retries} retries ({self.waited_s:.1f} s waited), {self.seconds:.1f} s" + checked
        )


class _Hashes:
    """sha256 and git blob sha1 of plan files (one read pass per file), remembered across runs.

    Re-running over a real suite (hundreds of GB) must not re-read every file: hashes of local files are kept in
    `cache_file` keyed by path and the file's (size, mtime_ns, ctime_ns, inode, device), and reused while all of
    those are unchanged. mtime alone is not enough: `cp -p`, `rsync -t` and `tar` rewrite a file and put its old
    mtime back, but none of them can restore its ctime. Verification after publishing checks content anyway.
    """

    def __init__(self, cache_file: Path | None = None) -> None:
        self._file = cache_file
        self._cache: dict[str, list] = {}
        if cache_file is not None and cache_file.is_file():
            try:
                self._cache = json.loads(cache_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                self._cache = {}  # a damaged cache only costs re-hashing
        self._dirty = False

    def of(self, file: PlanFile) -> tuple[str, str]:
        if file.content is not None:
            return _digest(file)
        local_path = _local_path(file)
        stat = local_path.stat()
        key = str(local_path.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
        cached = self._cache.get(key)
        if cached is None or cached[: len(stamp)] != stamp:
            cached = [*stamp, *_digest(file)]
            self._cache[key] = cached
            self._dirty = True
        return cached[-2], cached[-1]

    def forget(self, file: PlanFile) -> None:
        """Drop a file's cached hashes (its content did not match them)."""
        if file.local_path is not None and self._cache.pop(str(file.local_path.resolve()), None) is not None:
            self._dirty = True

    def save(self) -> None:
        if self._file is None or not self._dirty:
            return
        self._file.parent.mkdir(parents=True, exist_ok=True)
        staging = self._file.with_name(f".{self._file.name}.tmp-{os.getpid()}")
        staging.write_text(json.dumps(self._cache), encoding="utf-8")
        os.replace(staging, self._file)
        self._dirty = False


def _local_path(file: PlanFile) -> Path:
    """The file on disk behind a planned file without generated content."""
    # publish() refuses plans with estimated files (neither content nor a local path) before hashing anything.
    assert file.local_path is not None, f"{file.path_in_repo} is an estimated file: it has no local copy"
    return file.local_path


def _digest(file: PlanFile) -> tuple[str, str]:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    sha1.update(b"blob %d\0" % file.size)
    for chunk in _chunks(file):
        sha256.update(chunk)
        sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _chunks(file: PlanFile, size: int = 1 << 22) -> Iterator[bytes]:
    if file.content is not None:
        yield file.content
        return
    with open(_local_path(file), "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def _same(entry: RepoFile, sha256: str, sha1: str) -> bool:
    if entry.lfs is not None:
        return entry.lfs.sha256 == sha256
    return entry.blob_id == sha1


def is_local_endpoint(endpoint: str) -> bool:
    """True for a Hub on this machine (localhost or a loopback address), such as `spectra-hf hub serve`."""
    return is_loopback_host(urlparse(endpoint).hostname or "")


@contextmanager
def _quiet_uploads(quiet: bool) -> Iterator[None]:
    """Silence huggingface_hub's per-file upload bars (our own bars show repos and branches)."""
    was_disabled = are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was_disabled:
            enable_progress_bars()


@contextmanager
def _local_hub_client(enabled: bool) -> Iterator[None]:
    """For a Hub on this machine: upload through the LFS batch API instead of xet (a local Hub speaks LFS only), and
    let requests through even when HF_HUB_OFFLINE=1 (offline means no network; loopback is not the network).

    This is what HF_HUB_DISABLE_XET=1 / HF_HUB_OFFLINE=0 do; huggingface_hub reads those variables once at import, so
    a process that already imported it is configured through the same constants.
    """
    previous = constants.HF_HUB_DISABLE_XET, constants.HF_HUB_OFFLINE
    if enabled:
        constants.HF_HUB_DISABLE_XET, constants.HF_HUB_OFFLINE = True, False
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET, constants.HF_HUB_OFFLINE = previous


def _verify_mode(verify: bool | str, *, local: bool) -> str:
    if verify is True:
        return "full" if local else "sample"
    if verify is False or verify is None:
        return "none"
    if verify not in VERIFY_MODES:
        raise ConfigError(f"verify={verify!r}: use one of {', '.join(VERIFY_MODES)} (or True for the default)")
    return verify


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _explain(error: BaseException, *, doing: str, endpoint: str, token: str | None) -> SpectraError:
    """One line naming what failed and the fix; the token never appears in it."""
    if isinstance(error, httpx2.TransportError):
        message = (
            f"cannot reach the Hub at {endpoint} ({type(error).__name__}) while {doing}: check --endpoint / "
            "HF_ENDPOINT, or start a local Hub with `spectra-hf hub serve --root DIR` and pass its URL as --endpoint"
        )
    elif isinstance(error, LocalTokenNotFoundError):
        message = f"no Hub token found while {doing}: set HF_TOKEN, run `hf auth login`, or pass --token"
    elif isinstance(error, HfHubHTTPError) and error.response is not None and error.response.status_code in (401, 403):
        message = (
            f"the Hub at {endpoint} refused the token (HTTP {error.response.status_code}) while {doing}: use a token "
            "with write access to the org (HF_TOKEN, `hf auth login`, or --token)"
        )
    else:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"{doing} failed: {first_line}"
    return SpectraError(_scrub(message, token))


class Publisher:
    """Runs one publish: holds the client, the pacer, the hash cache and the report."""

    def __init__(self, plan: PublishPlan, *, api: HfApi, limits: HubLimits, progress: bool) -> None:
        self.plan = plan
        self.api = api
        self.pacer = Pacer(limits)
        self.hashes = _Hashes(plan.suite_dir / STAGING_DIR / HASH_CACHE)
        self.progress = progress
        self.report = PublishReport(endpoint=api.endpoint)

    def changes(self, repo_id: str, branch: BranchPlan) -> list[CommitOperationAdd | CommitOperationDelete]:
        """The operations that make the remote branch equal to the plan (empty when it already is)."""
        remote = {
            entry.path: entry
            for entry in self.api.list_repo_tree(repo_id, revision=branch.name, recursive=True)
            if isinstance(entry, RepoFile)
        }
        operations: list[CommitOperationAdd | CommitOperationDelete] = []
        for file in branch.files:
            entry = remote.pop(file.path_in_repo, None)
            if entry is None or entry.size != file.size or not _same(entry, *self.hashes.of(file)):
                source = file.content if file.content is not None else str(file.local_path)
                operations.append(CommitOperationAdd(path_in_repo=file.path_in_repo, path_or_fileobj=source))
        operations += [CommitOperationDelete(path_in_repo=path) for path in sorted(remote) if path not in _KEEP_REMOTE]
        return operations

    def _sync_branch(self, repo: RepoPlan, branch: BranchPlan) -> None:
        def attempt() -> None:
            operations = self.changes(repo.repo_id, branch)
            if not operations:
                return
            adds = [op for op in operations if isinstance(op, CommitOperationAdd)]
            self.pacer.admit(requests=4, repo=repo.repo_id, commits=1)
            where = "" if branch.step is None else f" (step {branch.step}, {branch.tokens_seen} tokens)"
            self.api.create_commit(
                repo.repo_id,
                operations,
                commit_message=f"Publish {repo.repo_id.split('/')[1]} {branch.name}{where}",
                revision=branch.name,
            )
            self.report.commits += 1
            self.report.files_uploaded += len(adds)
            self.report.files_deleted += len(operations) - len(adds)
            added = {op.path_in_repo for op in adds}
            self.report.bytes_uploaded += sum(f.size for f in branch.files if f.path_in_repo in added)

        self.pacer.call(attempt, requests=1)

    def publish_repo(self, repo: RepoPlan, *, private: bool) -> None:
        try:
            refs = self.pacer.call(lambda: self.api.list_repo_refs(repo.repo_id))
            remote = {b.name for b in refs.branches}
        except RepositoryNotFoundError:
            self.pacer.call(lambda: self.api.create_repo(repo.repo_id, private=private, exist_ok=True))
            self.report.repos_created += 1
            remote = {"main"}
        bar = tqdm(repo.branches, desc=repo.repo_id, unit="branch", leave=False, disable=not self.progress)
        for branch in bar:
            bar.set_postfix_str(branch.name)
            if branch.name != "main" and branch.name not in remote:
                self.pacer.call(partial(self.api.create_branch, repo.repo_id, branch=branch.name, exist_ok=True))
                self.report.branches_created += 1
            self._sync_branch(repo, branch)
        self.report.repos += 1
        self.report.branches += len(repo.branches)

    def publish_collections(self) -> None:
        for plan in self.plan.collections:
            collection = self.pacer.call(
                partial(
                    self.api.create_collection,
                    plan.title,
                    namespace=self.plan.org,
                    description=plan.description,
                    exists_ok=True,
                )
            )
            present = {item.item_id for item in collection.items}
            for repo_id in plan.items:
                if repo_id not in present:
                    self.pacer.call(
                        partial(self.api.add_collection_item, collection.slug, repo_id, "model", exists_ok=True)
                    )
                    self.report.collection_items_added += 1

    def verify(self) -> list[str]:
        """Every expected branch exists and holds exactly its planned files (by listing); returns the problems found."""
        problems = []
        for repo in tqdm(self.plan.repos, desc="verify", unit="repo", disable=not self.progress):
            refs = self.pacer.call(partial(self.api.list_repo_refs, repo.repo_id))
            branches = {b.name for b in refs.branches}
            for branch in repo.branches:
                if branch.name not in branches:
                    problems.append(f"{repo.repo_id}: branch {branch.name} is missing")
                    continue
                stale = self.pacer.call(partial(self.changes, repo.repo_id, branch))
                if stale:
                    paths = ", ".join(op.path_in_repo for op in stale[:5])
                    problems.append(f"{repo.repo_id}@{branch.name}: {len(stale)} files differ ({paths})")
        return problems

    def _content_matches(self, repo_id: str, branch: str, file: PlanFile) -> bool:
        """Download the published file and compare its sha256 with the local file's; False when it differs or the
        Hub refuses to serve it as corrupt. 429/5xx otherwise raise (for the pacer to retry)."""
        expected, _ = self.hashes.of(file)
        url = hf_hub_url(repo_id, file.path_in_repo, revision=branch, endpoint=self.api.endpoint)
        digest, size = hashlib.sha256(), 0
        headers = build_hf_headers(token=self.api.token)
        with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as response:
            if response.headers.get("X-Error-Code") == "CorruptContent":
                return False
            if response.status_code >= 400:
                response.read()  # the error body, for hf_raise_for_status's message
                hf_raise_for_status(response)
            for chunk in response.iter_bytes(1 << 22):
                digest.update(chunk)
                size += len(chunk)
        self.report.files_verified += 1
        self.report.bytes_verified += size
        return digest.hexdigest() == expected

    def _content_sample(
        self, mode: str, sample_bytes: int, seed: int | None
    ) -> list[tuple[RepoPlan, BranchPlan, PlanFile]]:
        everything = [
            (repo, branch, file) for repo in self.plan.repos for branch in repo.branches for file in branch.files
        ]
        if mode == "full":
            return everything
        rng = random.Random(seed)
        rng.shuffle(everything)
        chosen, budget = [], sample_bytes
        for item in everything:
            if item[2].size <= budget:
                chosen.append(item)
                budget -= item[2].size
        return chosen

    def verify_content(self, *, mode: str, sample_bytes: int, seed: int | None = None) -> list[str]:
        """Download and hash published files (all of them, or a random sample of about `sample_bytes`); re-upload
        those whose content differs from the local file and check them again. Returns what stays wrong."""
        differing: dict[tuple[str, str], list[tuple[BranchPlan, PlanFile]]] = {}
        chosen = self._content_sample(mode, sample_bytes, seed)
        for repo, branch, file in tqdm(chosen, desc="verify content", unit="file", disable=not self.progress):
            if not self.pacer.call(partial(self._content_matches, repo.repo_id, branch.name, file)):
                self.hashes.forget(file)  # re-read the local file too: the cache may be what is wrong
                differing.setdefault((repo.repo_id, branch.name), []).append((branch, file))
        problems = []
        for (repo_id, branch_name), items in differing.items():
            operations = [
                CommitOperationAdd(
                    path_in_repo=file.path_in_repo,
                    path_or_fileobj=file.content if file.content is not None else str(file.local_path),
                )
                for _, file in items
            ]
            logger.warning(
                f"{repo_id}@{branch_name}: {len(items)} published files differ from the local ones; re-uploading"
            )
            self.pacer.admit(requests=4, repo=repo_id, commits=1)
            self.pacer.call(
                partial(
                    self.api.create_commit,
                    repo_id,
                    operations,
                    commit_message=f"Repair {len(items)} files whose content did not verify",
                    revision=branch_name,
                )
            )
            self.report.commits += 1
            self.report.files_repaired += len(items)
            for _, file in items:
                if not self.pacer.call(partial(self._content_matches, repo_id, branch_name, file)):
                    problems.append(f"{repo_id}@{branch_name}: {file.path_in_repo} still differs after re-uploading it")
        return problems

    def load_back(self, cache_dir: Path) -> None:
        """Download every branch and load it with transformers (`trust_remote_code=True`)."""
        from transformers import AutoModelForCausalLM

        for repo in tqdm(self.plan.repos, desc="load", unit="repo", disable=not self.progress):
            for branch in repo.branches:
                local = self.pacer.call(
                    partial(self.api.snapshot_download, repo.repo_id, revision=branch.name, cache_dir=cache_dir)
                )
                AutoModelForCausalLM.from_pretrained(local, trust_remote_code=True)
                self.report.loaded.append(f"{repo.repo_id}@{branch.name}")


def publish(
    plan: PublishPlan,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    limits: HubLimits | None = None,
    allow_partial: bool = False,
    private: bool = False,
    verify: bool | str = True,
    load_check_dir: str | Path | None = None,
    progress: bool = True,
    verify_sample_bytes: int = DEFAULT_SAMPLE_BYTES,
) -> PublishReport:
    """Publish `plan` so that the Hub ends up holding exactly it; safe to re-run and to interrupt.

    Args:
        plan: from `spectra_hf.hub.plan.build_plan`.
        endpoint: Hub URL (default: HF_ENDPOINT, else https://huggingface.co). A loopback URL (a local Hub) uploads
            through the plain LFS API.
        token: write token (default: HF_TOKEN or the saved `hf auth login` token).
        limits: quotas and retry policy (default: the Hub's published quotas).
        allow_partial: publish a plan whose suite directory misses models or checkpoints (otherwise refused before
            any network call).
        private: create new repos private.
        verify: after publishing, check what the Hub holds. "listing": every expected branch exists and its tree
            lists the planned files with their hashes; "sample": that, plus the content of a random sample of files
            (about `verify_sample_bytes`) downloaded and hashed; "full": every file's content; "none"/False: skip.
            True picks "full" for a local Hub and "sample" for a remote one. Files whose content differs are
            uploaded again (the local Hub also refuses to serve, and asks again for, a stored copy that no longer
            matches its sha256).
        load_check_dir: when given, also download every branch there and load it with `from_pretrained`.
        progress: show tqdm bars per repo and per branch.
        verify_sample_bytes: content downloaded by `verify="sample"`.

    Raises:
        SpectraError: an incomplete plan (without `allow_partial`), an unreachable endpoint, a refused token, a
            failure that retries did not overcome, or a failed verification. The message never contains the token.
    """
    if plan.missing and not allow_partial:
        shown = "; ".join(plan.missing[:_MISSING_SHOWN])
        more = f" (and {len(plan.missing) - _MISSING_SHOWN} more)" if len(plan.missing) > _MISSING_SHOWN else ""
        raise CheckpointError(
            f"the suite directory {plan.suite_dir} is incomplete, nothing was published: {shown}{more}. "
            "Export what is missing, or publish the partial suite explicitly (--allow-partial)"
        )
    if not plan.repos:
        raise CheckpointError(f"nothing to publish: no complete model export in {plan.suite_dir}")
    if plan.estimated_files:
        raise ConfigError(
            f"this plan only estimates {len(plan.estimated_files)} files (made with build_plan(convert=False), as "
            "--dry-run makes it): build it with convert=True to publish"
        )
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    mode = _verify_mode(verify, local=is_local_endpoint(endpoint))
    secret = token or get_token()
    if secret is None and not is_local_endpoint(endpoint):
        raise HubError(
            f"no Hub token found for {endpoint}: set HF_TOKEN, run `hf auth login`, or pass --token "
            "(or publish to a local Hub: see `spectra-hf publish --help`)"
        )
    api = HfApi(endpoint=endpoint, token=token)
    publisher = Publisher(plan, api=api, limits=limits or HubLimits(), progress=progress)
    started = time.perf_counter()
    doing = f"contacting {endpoint}"
    try:
        with _local_hub_client(is_local_endpoint(endpoint)), _quiet_uploads(not progress):
            # One call first: an unreachable endpoint or a refused token fails here, before any write (a throttled
            # or failing Hub is waited for, as everywhere else).
            first_contact = api.whoami if secret else lambda: api.repo_exists(plan.repos[0].repo_id)
            publisher.pacer.call(first_contact, retry_transport=False)
            for repo in tqdm(plan.repos, desc="publish", unit="repo", disable=not progress):
                doing = f"publishing {repo.repo_id}"
                publisher.publish_repo(repo, private=private)
            doing = "publishing the collections"
            publisher.publish_collections()
            if mode != "none":
                doing = "verifying the published repos"
                problems = publisher.verify()
                if not problems and mode in ("sample", "full"):
                    doing = "verifying the published files' content"
                    problems = publisher.verify_content(mode=mode, sample_bytes=verify_sample_bytes)
                if problems:
                    raise HubError(
                        f"verification failed for {len(problems)} branches (re-run to repair): "
                        + "; ".join(problems[:5])
                    )
                publisher.report.verified = True
                publisher.report.verify_mode = mode
            if load_check_dir is not None:
                doing = "loading the published branches back"
                publisher.load_back(Path(load_check_dir))
    except (HfHubHTTPError, httpx2.TransportError, LocalTokenNotFoundError) as error:
        raise _explain(error, doing=doing, endpoint=endpoint, token=secret) from None
    finally:
        publisher.hashes.save()
    report = publisher.report
    report.retries, report.waited_s = publisher.pacer.retries, publisher.pacer.waited_s
    report.seconds = time.perf_counter() - started
    return report
