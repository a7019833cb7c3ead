"""What a release run will cost, before it runs: bytes down and up, API requests, disk, and wall time.

Download bytes are the release's own file sizes (tree listings). Upload bytes are estimated from the registry: a
revision shrinks by the ratio of the model's size in bits to its fp16 size (TriLM packed 1.6 bits per linear weight,
QuantLM at its effective bits, FloatLM unchanged). Requests count what huggingface_hub sends per revision (tree
listing, a HEAD and a GET per file; refs, branch, tree, preupload, LFS batch, one PUT per LFS file, commit, verify).
Wall time adds transfer at the given bandwidths, request latency, conversion at a measured rate, and the Hub's
commit quota per repo (128 per hour).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from spectra_hf.hub.pacing import HubLimits
from spectra_hf.release.discovery import ReleaseRevision
from spectra_hf.suite import FLOAT_BITS, SuiteModel, all_models

REQUESTS_PER_REVISION = 9  # tree listing + refs, create_branch, tree, preupload, LFS batch, commit, verify tree, card
REQUESTS_PER_FILE = 3  # HEAD + GET to download, plus a PUT or inline upload
# Conversion throughput (GB of release per second) measured by bench/bench_release.py on this project's 2-core machine.
DEFAULT_CONVERT_GB_PER_S = 0.05
# Assumption for the full-suite estimate: 500+ intermediate checkpoints over 18 trained runs (28 each = 504).
CHECKPOINTS_PER_RUN = 28
_RELEASE_FILES = 7  # config, generation config, weights, tokenizer (3), .gitattributes


@dataclass
class Estimate:
    repos: int
    revisions: int
    download_bytes: int
    upload_bytes: int
    requests: int
    largest_revision_bytes: int
    disk_bytes: int  # what --max-disk must allow for the largest revision (see disk_needed)
    seconds: float
    down_mb_s: float
    up_mb_s: float

    def describe(self) -> str:
        hours = self.seconds / 3600
        return (
            f"{self.repos} repos, {self.revisions} revisions: download {_gb(self.download_bytes)}, upload "
            f"{_gb(self.upload_bytes)} (estimated), {self.requests} API requests, disk needed "
            f"{_gb(self.disk_bytes)} (largest revision {_gb(self.largest_revision_bytes)}); about {hours:.1f} h at "
            f"{self.down_mb_s:g} MB/s down and {self.up_mb_s:g} MB/s up"
        )

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e7 else f"{size / 1e6:.2f} MB"


def upload_ratio(model: SuiteModel) -> float:
    """Published bytes per release byte: the model's size in bits over its all-fp16 size."""
    return model.size_bits / (model.params * FLOAT_BITS)


def disk_needed(size: int) -> int:
    """Disk a revision of `size` release bytes occupies at its peak: its download, and the converted output (never
    larger than the fp16 input) twice while the safetensors writer puts the header in front of a finished shard
    (bench_release measures 1.9x for TriLM, 3.0x for FloatLM, 1.5x for QuantLM)."""
    return 3 * size


def estimate(
    revisions: Sequence[tuple[SuiteModel, str, int, int]],
    *,
    down_mb_s: float = 100.0,
    up_mb_s: float = 50.0,
    request_latency_s: float = 0.2,
    convert_gb_s: float = DEFAULT_CONVERT_GB_PER_S,
    limits: HubLimits | None = None,
) -> Estimate:
    """Cost of publishing `revisions`, each (model, target repo name, release bytes, release file count)."""
    limits = limits or HubLimits()
    download = sum(size for _, _, size, _ in revisions)
    upload = round(sum(size * upload_ratio(model) for model, _, size, _ in revisions))
    requests = sum(REQUESTS_PER_REVISION + REQUESTS_PER_FILE * files for *_, files in revisions)
    per_repo = Counter(repo for _, repo, _, _ in revisions)
    transfer = download / (down_mb_s * 1e6) + upload / (up_mb_s * 1e6)
    work = transfer + requests * request_latency_s + download / (convert_gb_s * 1e9)
    # The request quota and the busiest repo's commit quota bound the run from below.
    quota = max(
        requests / limits.requests_per_window * limits.window_s,
        max(per_repo.values(), default=0) / limits.commits_per_hour * 3600,
    )
    largest = max((size for _, _, size, _ in revisions), default=0)
    return Estimate(
        repos=len(per_repo),
        revisions=len(revisions),
        download_bytes=download,
        upload_bytes=upload,
        requests=requests,
        largest_revision_bytes=largest,
        disk_bytes=disk_needed(largest),
        seconds=max(work, quota),
        down_mb_s=down_mb_s,
        up_mb_s=up_mb_s,
    )


def revisions_of(found: Sequence[ReleaseRevision]) -> list[tuple[SuiteModel, str, int, int]]:
    """`estimate` rows of discovered revisions (their real file sizes)."""
    return [(r.model, r.model.name, r.size, len(r.files)) for r in found]


def full_suite_revisions(checkpoints_per_run: int = CHECKPOINTS_PER_RUN) -> list[tuple[SuiteModel, str, int, int]]:
    """`estimate` rows for the whole release without the network: fp16 sizes from the registry's parameter counts
    (2 bytes each), the 54 final models plus `checkpoints_per_run` checkpoints per TriLM and FloatLM."""
    rows = []
    for model in all_models():
        size = 2 * model.params
        rows.append((model, model.name, size, _RELEASE_FILES))
        if model.family != "quantlm":
            rows.extend((model, model.name, size, _RELEASE_FILES) for _ in range(checkpoints_per_run))
    return rows
