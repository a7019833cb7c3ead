"""From the public release to the published suite, revision by revision, under a disk budget, resumable.

For each release revision (per model: its checkpoint branches by step, then the final model as `main`):

    download exactly the release tree at the discovered commit (release.download: resumable, each file checked)
    -> convert + verify (release.conversion) -> free the download
    -> publish as branch `step<N>` / `main` of ORG/<name> (the publisher: one idempotent commit per branch,
       paced, verified) -> journal entry with the branch's commit and the sha256 of every published file
    -> free the output

Only one revision's files exist at a time, so disk stays under three times the largest revision (its download, and
its conversion twice while a shard's header is put in front), which is checked against `max_disk` before anything
is downloaded, and again, against the measured usage of the work dir, before each file is downloaded and before
each conversion (release.disk): a run that would pass the budget stops before it, resumably. The work dir is bound
to one target (release.target). The journal (release.journal) makes a killed run resume where it stopped; the
publisher's tree comparison makes sure no revision is committed twice. Before the manifest is written, every
published row is confirmed on the target (release.verify: branch at the recorded commit, every sha256); a row that
is not is processed again, then reported `unverified`. The manifest (release.manifest) is then written, published to
ORG/spectra-release-manifest, and returned; the run is complete when no revision is refused, missing, pending or
unverified.

`import` mode runs the same loop but moves each verified conversion into a suite directory
(`spectra_hf.checkpoints.exports` layout) instead of publishing it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from tqdm.auto import tqdm
from transformers.utils import logging

from spectra_hf.cards import Revision
from spectra_hf.checkpoints.exports import checkpoint_dir, model_dir
from spectra_hf.checkpoints.io import read_config
from spectra_hf.errors import CheckpointError, ConfigError, HubError
from spectra_hf.hub.client import is_local_endpoint, local_hub_client, quiet_uploads
from spectra_hf.hub.hashing import FileHashes
from spectra_hf.hub.http_errors import explain_hub_error
from spectra_hf.hub.pacing import HubLimits
from spectra_hf.hub.plan import BranchPlan, PublishPlan, RepoPlan, check_repo_id, export_files
from spectra_hf.hub.publish import Publisher
from spectra_hf.hub.repo_files import (
    CARD_FILE,
    file_on_disk,
    generated_file,
    has_tokenizer,
    human_size,
    revisions_json,
)
from spectra_hf.release.cards import revision_card
from spectra_hf.release.conversion import Conversion, convert_revision
from spectra_hf.release.discovery import Discovery, ReleaseRevision, discover, select_models
from spectra_hf.release.disk import DiskBudget, directory_bytes
from spectra_hf.release.download import download_revision
from spectra_hf.release.estimate import Estimate, disk_needed, estimate, revisions_of
from spectra_hf.release.journal import JOURNAL_FILE, Journal
from spectra_hf.release.manifest import (
    MANIFEST_FILE,
    MANIFEST_REPO,
    build_manifest,
    manifest_card,
    render,
    write_manifest,
)
from spectra_hf.release.target import bind_work_dir
from spectra_hf.release.verify import branch_problem, rebuild_entries

logger = logging.get_logger(__name__)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?B?|B)?\s*$")
_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_size(text: str) -> int:
    """'200GB', '1.5 TB', '512MiB', '1000000' -> bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(f"cannot read the size {text!r}: write it like 200GB, 512MiB or 1000000 (bytes)")
    number, unit = match.groups()
    unit = (unit or "").removesuffix("B")
    return int(float(number) * _UNITS[unit[:1].upper() + unit[1:]])


@dataclass
class ReleaseRunReport:
    """What one run did. `manifest["complete"]` says whether every release revision is accounted for."""

    mode: str
    discovery: Discovery
    estimate: Estimate
    manifest: dict[str, Any] | None = None
    manifest_path: Path | None = None
    commits: int = 0
    processed: int = 0
    skipped: int = 0
    refused: list[str] = field(default_factory=list)
    reprocessed: list[str] = field(default_factory=list)  # published rows the final check did not confirm
    peak_disk_bytes: int = 0  # measured (release.disk), sampled while the run held files
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return bool(self.manifest and self.manifest["complete"])

    def summary(self) -> str:
        m = self.manifest or {}
        return (
            f"{len(self.discovery.revisions)} release revisions: {self.processed} processed, "
            f"{self.skipped} already done, "
            f"{len(m.get('refused', []))} refused, {len(m.get('missing', []))} missing, {len(m.get('pending', []))} "
            f"pending, {len(m.get('unverified', []))} unverified ({len(self.reprocessed)} re-processed after the "
            f"final check); {self.commits} commits; peak disk {human_size(self.peak_disk_bytes)}; {self.seconds:.1f} s"
        )


def _slug(revision: ReleaseRevision) -> str:
    return f"{revision.source_repo.replace('/', '--')}@{revision.source_revision}"


class _Run:
    """State of one run: clients, journal, publisher, work directories and counters."""

    def __init__(
        self,
        *,
        mode: str,
        discovery: Discovery,
        source_api: HfApi,
        target_api: HfApi | None,
        target_org: str | None,
        suite_dir: Path | None,
        work_dir: Path,
        limits: HubLimits,
        private: bool,
        progress: bool,
        report: ReleaseRunReport,
        budget: DiskBudget,
        token: str | None,
    ) -> None:
        self.mode = mode
        self.discovery = discovery
        self.source_api = source_api
        self.target_org = target_org
        self.suite_dir = suite_dir
        self.work_dir = work_dir
        self.downloads = work_dir / "download"
        self.converted = work_dir / "convert"
        self.journal = Journal(work_dir / JOURNAL_FILE)
        self.budget = budget
        self.token = token
        self.private = private
        self.progress = progress
        self.report = report
        self.publisher: Publisher | None = None
        if target_api is not None:
            assert target_org is not None, "run_release passes a target API only to a publish run, which has an org"
            plan = PublishPlan(org=target_org, suite_dir=work_dir, repos=[], collections=[])
            self.publisher = Publisher(plan, api=target_api, limits=limits, progress=False)

    def _target(self) -> tuple[str, Publisher]:
        """The org and publisher of a publish run (an import run publishes nothing)."""
        assert self.target_org is not None and self.publisher is not None, "only a publish run publishes"
        return self.target_org, self.publisher

    def done(self, revision: ReleaseRevision) -> bool:
        """Done for this very release commit (a branch that moved since is processed again)."""
        entry = self.journal.entries.get(revision.key, {})
        return self.journal.done(revision.key) and entry.get("source_commit") == revision.source_commit

    def _clear_other_work(self, keep: Path) -> None:
        """Remove what a killed run left of other revisions, so that one revision at a time is on disk."""
        for parent in (self.downloads, self.converted):
            if parent.is_dir():
                for child in parent.iterdir():
                    if child != keep:
                        shutil.rmtree(child, ignore_errors=True)

    def process(self, revision: ReleaseRevision) -> None:
        key = revision.key
        download = self.downloads / _slug(revision)
        out = self.converted / _slug(revision)
        self._clear_other_work(keep=download)
        shutil.rmtree(out, ignore_errors=True)  # the conversion writes into a folder of its own, from scratch
        if not revision.has_weights:
            self.journal.record(key, "refused", reason=f"{key} holds no config.json and *.safetensors weights")
            self.report.refused.append(key)
            return
        download_revision(revision, download, endpoint=self.source_api.endpoint, token=self.token, budget=self.budget)
        self.journal.record(key, "downloaded")
        # the converted output is never larger than the fp16 input, held twice while a shard's header is put in front
        self.budget.admit(disk_needed(revision.size) - revision.size, doing=f"converting {key}")
        try:
            conversion = convert_revision(revision, download, out)
        except CheckpointError as error:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(download, ignore_errors=True)
            reason = str(error).replace(f"{download}/", "").replace(str(download), key)  # no paths of this machine
            self.journal.record(key, "refused", reason=reason)
            self.report.refused.append(f"{key}: {reason}")
            logger.error(f"refused {key}: {reason}")
            return
        self.budget.measure()
        shutil.rmtree(download, ignore_errors=True)
        self.journal.record(key, "converted", checks=conversion.checks)
        if self.mode == "publish":
            self._publish(revision, conversion, out)
        else:
            self._import(revision, conversion, out)
        shutil.rmtree(out, ignore_errors=True)
        self.report.processed += 1

    def _published_checkpoints(self, revision: ReleaseRevision) -> list[Revision]:
        """Done checkpoint branches of the same model, by step (main's card and revisions.json list them)."""
        rows = []
        for other in self.discovery.revisions:
            if other.model == revision.model and other.step is not None and self.done(other):
                rows.append(Revision(branch=other.branch, step=other.step, tokens_seen=other.tokens_seen))
        return sorted(rows, key=lambda r: r.step)

    def _publish(self, revision: ReleaseRevision, conversion: Conversion, out: Path) -> None:
        target_org, publisher = self._target()
        files = export_files(out)
        config = read_config(out)
        checkpoints = self._published_checkpoints(revision) if revision.step is None else []
        card = revision_card(
            revision,
            conversion,
            org=target_org,
            config=config,
            revisions=checkpoints,
            has_tokenizer=has_tokenizer(files),
        )
        plan_files = [file_on_disk(path, local) for path, local in files.items()] + [generated_file(CARD_FILE, card)]
        repo_id = f"{target_org}/{revision.model.name}"
        if revision.step is None:
            plan_files.append(
                revisions_json(
                    repo_id, main_step=None, main_tokens_seen=None, revisions=checkpoints, release=revision.key
                )
            )
        branch = BranchPlan(
            name=revision.branch, files=plan_files, step=revision.step, tokens_seen=revision.tokens_seen
        )
        repo = RepoPlan(repo_id=repo_id, model=revision.model, variant="release", branches=[branch])
        before = publisher.report.commits
        publisher.publish_repo(repo, private=self.private)
        self.report.commits += publisher.report.commits - before
        stale = publisher.changes(repo_id, branch)
        if stale:
            raise HubError(
                f"{repo_id}@{branch.name} does not hold what was published ({len(stale)} files differ); "
                "re-run to repair"
            )
        refs = publisher.api.list_repo_refs(repo_id).branches
        head = next(ref.target_commit for ref in refs if ref.name == branch.name)  # the commit the final check expects
        self.journal.record(
            revision.key,
            "published",
            repo=repo_id,
            branch=branch.name,
            commit=head,
            source_commit=revision.source_commit,
            conversion=conversion.conversion,
            checks=conversion.checks,
            warnings=conversion.warnings,
            files={f.path_in_repo: publisher.hashes.of(f)[0] for f in plan_files},
        )

    def _import(self, revision: ReleaseRevision, conversion: Conversion, out: Path) -> None:
        suite_dir = self.suite_dir
        assert suite_dir is not None, "an import run has a suite directory"
        hashes = FileHashes(None)
        name = revision.model.name
        if revision.step is not None:
            target = checkpoint_dir(suite_dir, name, revision.step)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            files = {p.name: hashes.of(file_on_disk(p.name, p))[0] for p in sorted(out.iterdir()) if p.is_file()}
            os.replace(out, target)
        else:
            # the model's directory also holds its checkpoints/: replace its files one by one, not the directory
            target = model_dir(suite_dir, name)
            target.mkdir(parents=True, exist_ok=True)
            for stale in target.iterdir():
                if stale.is_file():
                    stale.unlink()
            files = {}
            for path in sorted(out.iterdir()):
                if path.is_file():
                    files[path.name] = hashes.of(file_on_disk(path.name, path))[0]
                    os.replace(path, target / path.name)
        relative = target.relative_to(suite_dir).as_posix()
        self.journal.record(
            revision.key,
            "imported",
            source_commit=revision.source_commit,
            conversion=conversion.conversion,
            checks=conversion.checks,
            warnings=conversion.warnings,
            files=files,
            path=relative,
        )

    def unconfirmed(self, revisions: Sequence[ReleaseRevision]) -> list[tuple[ReleaseRevision, str]]:
        """The final check: (revision, why) for each published row the target does not hold as recorded."""
        _, publisher = self._target()
        failed = []
        for revision in revisions:
            entry = self.journal.entries.get(revision.key, {})
            if entry.get("state") != "published" or not self.done(revision):
                continue
            check = functools.partial(
                branch_problem,
                publisher.api,
                repo_id=f"{self.target_org}/{revision.model.name}",
                branch=revision.branch,
                commit=entry.get("commit"),
                files=entry["files"],
            )
            # paced and retried like the publishing itself: refs, tree, and the small files it fetches
            problem = publisher.pacer.call(check, requests=2 + len(entry["files"]))
            if problem is not None:
                failed.append((revision, problem))
        return failed

    def publish_manifest(self, manifest: dict[str, Any]) -> None:
        target_org, publisher = self._target()
        repo_id = f"{target_org}/{MANIFEST_REPO}"
        files = [generated_file(MANIFEST_FILE, render(manifest)), generated_file(CARD_FILE, manifest_card(manifest))]
        from spectra_hf.suite import all_models

        branch = BranchPlan(name="main", files=files)
        repo = RepoPlan(repo_id=repo_id, model=all_models()[0], variant="release", branches=[branch])
        before = publisher.report.commits
        publisher.publish_repo(repo, private=self.private)
        self.report.commits += publisher.report.commits - before


def run_release(
    *,
    source_org: str,
    target_org: str | None = None,
    suite_dir: str | Path | None = None,
    work_dir: str | Path,
    endpoint: str | None = None,
    source_endpoint: str | None = None,
    token: str | None = None,
    models: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    max_disk: int | None = None,
    dry_run: bool = False,
    limits: HubLimits | None = None,
    private: bool = False,
    progress: bool = True,
    down_mb_s: float = 100.0,
    up_mb_s: float = 50.0,
    rebuild_journal: bool = False,
    on_discovered: Callable[[Discovery], None] | None = None,
) -> ReleaseRunReport:
    """Re-publish (`target_org`) or import (`suite_dir`) the release of `source_org`; see the module docstring.

    Args:
        source_org: the release org (SpectraSuite).
        target_org: publish to this org; exactly one of `target_org` and `suite_dir`.
        suite_dir: import into this suite directory instead.
        work_dir: downloads, conversions, the journal and the manifest; reuse it to resume.
        endpoint: the Hub to publish to (default HF_ENDPOINT or huggingface.co); source_endpoint: the Hub the release
            is read from (default: `endpoint`).
        models: suite model names (any spelling the registry accepts); default all 54. Named models whose release
            repo does not exist are refused before anything is done.
        steps: only these checkpoint steps (each must exist); default every step<N> branch.
        max_disk: bytes the work directory may use; refused before anything is done if one revision needs more, and
            enforced while the run goes (it stops, resumably, before the measured usage would pass it).
        dry_run: discover and estimate only (tree listings; nothing downloaded or published).
        limits: Hub quotas (default: the Hub's; a local Hub gets none).
        down_mb_s, up_mb_s: bandwidths the dry-run estimate assumes.
        rebuild_journal: replace the work dir's journal (a damaged one is kept beside it) by the rows of the manifest
            published on the target that the target still holds; publish runs only.
        on_discovered: called with the discovery before anything is downloaded (what the run will process).

    Raises:
        SpectraError: bad options, a missing repo or branch, too little disk, an unreachable Hub or a refused token
            (before anything is published); a failure while publishing (re-run to resume).
        ConfigError: a work dir bound to another target; --max-disk that would be passed during the run (stopped
            before it; re-run with a larger budget to resume).
        CheckpointError: a damaged journal (names the line; `rebuild_journal` is the way out).
    """
    if (target_org is None) == (suite_dir is None):
        raise ConfigError("pass exactly one of a target org (publish) and a suite directory (import)")
    mode = "publish" if target_org is not None else "import"
    selected = select_models(models)
    if target_org is not None:
        for model in selected:
            check_repo_id(f"{target_org}/{model.name}")
    check_repo_id(f"{source_org}/{selected[0].name}")
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    source_endpoint = (source_endpoint or endpoint).rstrip("/")
    work_dir = Path(work_dir)
    started = time.perf_counter()
    local = is_local_endpoint(endpoint) and is_local_endpoint(source_endpoint)
    limits = limits or (HubLimits.unlimited() if local else HubLimits())
    source_api = HfApi(endpoint=source_endpoint, token=token)
    target = (
        {"mode": "publish", "endpoint": endpoint, "org": target_org}
        if target_org is not None
        else {"mode": "import", "suite_dir": str(Path(suite_dir).resolve())}  # type: ignore[arg-type]
    )
    doing = f"listing the release of {source_org} at {source_endpoint}"
    with ExitStack() as stack:
        stack.enter_context(local_hub_client(local))
        stack.enter_context(quiet_uploads(not progress))
        try:
            found = discover(
                source_api, source_org=source_org, models=selected, steps=steps, require_repos=bool(models)
            )
            report = ReleaseRunReport(
                mode=mode,
                discovery=found,
                estimate=estimate(revisions_of(found.revisions), down_mb_s=down_mb_s, up_mb_s=up_mb_s),
            )
            _check_disk(found, max_disk=max_disk, work_dir=work_dir)
            if dry_run:
                report.seconds = time.perf_counter() - started
                return report
            bind_work_dir(work_dir, target)
            target_api = HfApi(endpoint=endpoint, token=token) if mode == "publish" else None
            if on_discovered is not None:
                on_discovered(found)
            if rebuild_journal:
                doing = f"rebuilding the journal from {target_org} at {endpoint}"
                _rebuild_journal(found, work_dir=work_dir, target_api=target_api, target_org=target_org)
            budget = stack.enter_context(DiskBudget(work_dir, limit=max_disk))
            stack.callback(lambda: setattr(report, "peak_disk_bytes", budget.peak))
            run = _Run(
                mode=mode,
                discovery=found,
                source_api=source_api,
                target_api=target_api,
                target_org=target_org,
                suite_dir=Path(suite_dir) if suite_dir is not None else None,
                work_dir=work_dir,
                limits=limits,
                private=private,
                progress=progress,
                report=report,
                budget=budget,
                token=token,
            )
            bar = tqdm(found.revisions, desc=f"release {mode}", unit="revision", disable=not progress)
            for revision in bar:
                bar.set_postfix_str(revision.key)
                if run.done(revision):
                    report.skipped += 1
                    continue
                doing = f"{'publishing' if mode == 'publish' else 'importing'} {revision.key}"
                run.process(revision)
            if mode == "publish":
                doing = f"checking what {target_org} holds at {endpoint}"
                _final_check(run)
            shutil.rmtree(run.downloads, ignore_errors=True)
            shutil.rmtree(run.converted, ignore_errors=True)
            manifest = build_manifest(found, run.journal, target_org=target_org, mode=mode)
            report.manifest = manifest
            report.manifest_path = write_manifest(
                manifest, (Path(suite_dir) if suite_dir else work_dir) / MANIFEST_FILE
            )
            if mode == "publish":
                doing = "publishing the manifest"
                run.publish_manifest(manifest)
        except (HfHubHTTPError, httpx2.TransportError, LocalTokenNotFoundError) as error:
            raise explain_hub_error(error, doing=doing, endpoint=endpoint, token=token) from None
        finally:
            if "run" in locals() and run.publisher is not None:
                run.publisher.hashes.save()
    report.seconds = time.perf_counter() - started
    return report


def _final_check(run: _Run) -> None:
    """Confirm every published row on the target; re-process each that fails once, then mark it `unverified`."""
    failed = run.unconfirmed(run.discovery.revisions)
    for revision, problem in failed:
        logger.warning(f"final check: {revision.key} -> {problem}; processing it again")
        run.journal.record(revision.key, "unverified", reason=problem)
        run.report.reprocessed.append(revision.key)
        run.process(revision)
    for revision, problem in run.unconfirmed([revision for revision, _ in failed]):
        logger.error(f"final check: {revision.key} -> {problem}")
        run.journal.record(revision.key, "unverified", reason=problem)


def _rebuild_journal(found: Discovery, *, work_dir: Path, target_api: HfApi | None, target_org: str | None) -> None:
    """Replace the journal by the rows the target's published manifest lists and the target really holds."""
    if target_api is None or target_org is None:
        raise ConfigError(
            "--rebuild-journal rebuilds from a target Hub: it is an option of `release publish`; for an import, "
            "remove the journal to redo every revision"
        )
    journal = Journal(work_dir / JOURNAL_FILE, load=False)
    entries = rebuild_entries(target_api, found, target_org=target_org)
    kept = journal.replace(entries)
    logger.warning(
        f"rebuilt {journal.path} from {target_org} at {target_api.endpoint}: {len(entries)} of {len(found.revisions)} "
        "revisions confirmed there (the others are processed again, nothing is committed twice)"
        + (f"; the previous journal is kept as {kept}" if kept else "")
    )


def _check_disk(found: Discovery, *, max_disk: int | None, work_dir: Path) -> None:
    """Refuse, before anything is downloaded, a budget (or a disk) too small for the largest single revision."""
    if not found.revisions:
        return
    largest = max(found.revisions, key=lambda r: r.size)
    needed = disk_needed(largest.size)
    if max_disk is not None and needed > max_disk:
        raise ConfigError(
            f"--max-disk {human_size(max_disk)} is too small for one revision: {largest.key} needs "
            f"{human_size(needed)} (its {human_size(largest.size)} download and up to twice that while the conversion "
            "is written). Nothing was downloaded "
            f"or published; raise --max-disk to at least {human_size(needed)}"
        )
    probe = next(p for p in (work_dir, *work_dir.resolve().parents) if p.exists())
    # what a previous run left in the work directory is freed as this one goes, so it counts as free
    free = shutil.disk_usage(probe).free + (directory_bytes(work_dir) if work_dir.exists() else 0)
    if needed > free:
        raise ConfigError(
            f"{probe} has {human_size(free)} free, too little for one revision: {largest.key} needs "
            f"{human_size(needed)}. "
            "Nothing was downloaded or published; free disk or pass a --work-dir on a larger disk"
        )
