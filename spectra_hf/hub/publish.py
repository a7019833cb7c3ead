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
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import (
    build_hf_headers,
    get_session,
    hf_raise_for_status,
)
from tqdm.auto import tqdm
from transformers.utils import logging

from spectra_hf.checkpoints.verify import verify_weight_files
from spectra_hf.errors import CheckpointError, ConfigError, HubError
from spectra_hf.hub.client import is_local_endpoint, local_hub_client, quiet_uploads
from spectra_hf.hub.hashing import HASH_CACHE, FileHashes
from spectra_hf.hub.http_errors import explain_hub_error
from spectra_hf.hub.org_spelling import check_org_spelling
from spectra_hf.hub.pacing import HubLimits, Pacer
from spectra_hf.hub.plan import STAGING_DIR, BranchPlan, PublishPlan, RepoPlan
from spectra_hf.hub.repo_files import PlanFile

logger = logging.get_logger(__name__)

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


def _same(entry: RepoFile, sha256: str, sha1: str) -> bool:
    if entry.lfs is not None:
        return entry.lfs.sha256 == sha256
    return entry.blob_id == sha1


def _verify_mode(verify: bool | str, *, local: bool) -> str:
    if verify is True:
        return "full" if local else "sample"
    if verify is False or verify is None:
        return "none"
    if verify not in VERIFY_MODES:
        raise ConfigError(f"verify={verify!r}: use one of {', '.join(VERIFY_MODES)} (or True for the default)")
    return verify


class Publisher:
    """Runs one publish: holds the client, the pacer, the hash cache and the report."""

    def __init__(self, plan: PublishPlan, *, api: HfApi, limits: HubLimits, progress: bool) -> None:
        self.plan = plan
        self.api = api
        self.pacer = Pacer(limits)
        self.hashes = FileHashes(plan.suite_dir / STAGING_DIR / HASH_CACHE)
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
                weights = [f.local_path for f in branch.files if f.path_in_repo.endswith(".safetensors")]
                digests = verify_weight_files(w for w in weights if w)  # recorded tensor digests: flipped bytes
                if not digests.ok:
                    problems.append(f"{repo.repo_id}@{branch.name}: {digests.summary()}")
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
        CheckpointError: an incomplete plan (without `allow_partial`) or one with nothing to publish.
        ConfigError: a plan with estimated files, or an unknown `verify` mode.
        HubError: no token for a remote Hub, an unreachable endpoint, a refused token, a failure that retries did
            not overcome, or a failed verification. No message contains the token.
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
        with local_hub_client(is_local_endpoint(endpoint)), quiet_uploads(not progress):
            # One call first: an unreachable endpoint or a refused token fails here, before any write (a throttled
            # or failing Hub is waited for, as everywhere else).
            first_contact = api.whoami if secret else lambda: api.repo_exists(plan.repos[0].repo_id)
            publisher.pacer.call(first_contact, retry_transport=False)
            check_org_spelling(api, plan.org, probe_repo=plan.repos[0].repo_id, call=publisher.pacer.call)
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
        raise explain_hub_error(error, doing=doing, endpoint=endpoint, token=secret) from None
    finally:
        publisher.hashes.save()
    report = publisher.report
    report.retries, report.waited_s = publisher.pacer.retries, publisher.pacer.waited_s
    report.seconds = time.perf_counter() - started
    return report
