"""Which repos and revisions the public release holds for the suite models asked for.

Each suite model has one release repo for its final weights (`SuiteModel.release_repo`: `TriLM_<size>_Unpacked`,
`FloatLM_<size>`, `QuantLM_<size>_<b>bit_Unpacked`) and, for the two trained families, a checkpoint repo
`<TriLM|FloatLM>_<size>_Unpacked_ckpts` with one branch `step<N>` per checkpoint. Every spelling of the size the
registry knows (the "2.3B" alias of 2.4B) is tried for each, since the release is not consistent about it.
Branches come from `list_repo_refs`, file sizes from the tree listing of each revision (one request each).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile

from spectra_hf.errors import HubError
from spectra_hf.suite import FAMILY_PREFIX, SIZE_ALIASES, UNPACKED_SUFFIX, SuiteModel, all_models, get_model

CKPTS_SUFFIX = f"{UNPACKED_SUFFIX}_ckpts"
STEP_BRANCH = re.compile(r"^step(\d+)$")
_WEIGHT_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ReleaseFile:
    """A file of a release revision as its tree listing gives it: the download is checked against these."""

    path: str
    size: int
    blob_id: str = ""  # git blob sha1
    sha256: str | None = None  # LFS files only


@dataclass
class ReleaseRevision:
    """One revision of the release that becomes one branch of a re-published repo."""

    model: SuiteModel
    source_repo: str  # e.g. SpectraSuite/TriLM_99M_Unpacked_ckpts
    source_revision: str  # branch name in the source repo
    source_commit: str  # what the branch pointed at when discovered: listed, downloaded and converted
    step: int | None  # None for the final model (published as `main`)
    files: list[ReleaseFile]

    @property
    def key(self) -> str:
        """`repo@revision`: the journal and manifest key."""
        return f"{self.source_repo}@{self.source_revision}"

    @property
    def branch(self) -> str:
        return "main" if self.step is None else f"step{self.step}"

    @property
    def tokens_seen(self) -> int | None:
        return None if self.step is None else self.step * self.model.batch_tokens

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def has_weights(self) -> bool:
        return any(f.path.endswith(_WEIGHT_SUFFIX) for f in self.files) and any(
            f.path == "config.json" for f in self.files
        )


@dataclass
class Discovery:
    """The release revisions of the selected models, in publishing order (per model: checkpoints by step, then main)."""

    source_org: str
    revisions: list[ReleaseRevision] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)  # {"what", "reason"}

    @property
    def bytes(self) -> int:
        return sum(r.size for r in self.revisions)


def size_spellings(size: str) -> list[str]:
    """The registry's size and every alias of it, e.g. 2.4B -> ["2.4B", "2.3B"]."""
    return [size, *(alias for alias, canonical in SIZE_ALIASES.items() if canonical == size)]


def final_repo_candidates(model: SuiteModel, org: str) -> list[str]:
    """Repo ids that may hold the model's final release weights, the registry's spelling first."""
    registry = model.release_repo.split("/", 1)[1]
    names = [registry]
    for size in size_spellings(model.size):
        names.append(registry.replace(f"_{_registry_size(registry)}", f"_{size}", 1))
    return [f"{org}/{name}" for name in dict.fromkeys(names)]


def _registry_size(repo_name: str) -> str:
    return repo_name.split("_")[1]


def ckpts_repo_candidates(model: SuiteModel, org: str) -> list[str]:
    """Repo ids that may hold the model's checkpoint branches (trained families only)."""
    if model.family == "quantlm":
        return []
    prefix = FAMILY_PREFIX[model.family]
    return [f"{org}/{prefix}_{size}{CKPTS_SUFFIX}" for size in size_spellings(model.size)]


def select_models(names: Sequence[str] | None) -> list[SuiteModel]:
    """The suite models named (any spelling the registry accepts), or all 54; unknown names are refused."""
    if not names:
        return all_models()
    models = []
    for name in names:
        model = get_model(name)
        if model not in models:
            models.append(model)
    return models


def _files(api: HfApi, repo_id: str, revision: str) -> list[ReleaseFile]:
    """The tree of `revision` (a commit sha: the files of that commit, whatever its branch does meanwhile)."""
    entries = api.list_repo_tree(repo_id, revision=revision, recursive=True)
    return sorted(
        (
            ReleaseFile(e.path, e.size, blob_id=e.blob_id, sha256=e.lfs.sha256 if e.lfs is not None else None)
            for e in entries
            if isinstance(e, RepoFile)
        ),
        key=lambda f: f.path,
    )


def _first_existing(api: HfApi, candidates: Sequence[str]):
    """(repo_id, refs) of the first candidate that exists, or (None, None)."""
    for repo_id in candidates:
        try:
            return repo_id, api.list_repo_refs(repo_id)
        except RepositoryNotFoundError:
            continue
    return None, None


def discover(
    api: HfApi,
    *,
    source_org: str,
    models: Sequence[SuiteModel],
    steps: Sequence[int] | None = None,
    require_repos: bool = False,
) -> Discovery:
    """List the release revisions of `models` under `source_org` (tree listings included, nothing downloaded).

    Args:
        steps: only these checkpoint steps (each must exist for every selected trained model), plus the final models.
        require_repos: refuse (HubError) when a model's final release repo does not exist, instead of listing it as
            missing; used when the caller named the models.

    Raises:
        HubError: a required repo that does not exist; a requested checkpoint step that the release lacks.
    """
    found = Discovery(source_org=source_org)
    for model in models:
        final_repo, final_refs = _first_existing(api, final_repo_candidates(model, source_org))
        if final_repo is None:
            tried = ", ".join(final_repo_candidates(model, source_org))
            if require_repos:
                raise HubError(
                    f"the release has no repo for {model.name}: none of {tried} exists at {api.endpoint}. Check --from "
                    "and --endpoint, or leave the model out of --models"
                )
            found.missing.append({"what": model.name, "reason": f"no release repo (tried {tried})"})
            continue
        ckpt_repo, ckpt_refs = _first_existing(api, ckpts_repo_candidates(model, source_org))
        branches: dict[int, str] = {}
        if ckpt_refs is not None:
            for ref in ckpt_refs.branches:
                match = STEP_BRANCH.match(ref.name)
                if match:
                    branches[int(match.group(1))] = ref.target_commit
        elif model.family != "quantlm":
            found.missing.append(
                {
                    "what": f"{model.name} checkpoints",
                    "reason": f"no checkpoint repo ({', '.join(ckpts_repo_candidates(model, source_org))})",
                }
            )
        wanted = sorted(branches) if steps is None else sorted(set(steps))
        if steps is not None and model.family != "quantlm":
            absent = [s for s in wanted if s not in branches]
            if absent:
                have = ", ".join(f"step{s}" for s in sorted(branches)) or "none"
                raise HubError(
                    f"{ckpt_repo or model.name} has no checkpoint branch "
                    f"{', '.join(f'step{s}' for s in absent)} (its branches: {have}); pass --steps from that list"
                )
        for step in wanted if model.family != "quantlm" else []:
            revision = f"step{step}"
            try:
                files = _files(api, ckpt_repo, branches[step])
            except RevisionNotFoundError:  # deleted between the refs listing and now
                found.missing.append(
                    {"what": f"{ckpt_repo}@{revision}", "reason": "branch disappeared during discovery"}
                )
                continue
            found.revisions.append(ReleaseRevision(model, ckpt_repo, revision, branches[step], step, files))
        main = next((ref.target_commit for ref in final_refs.branches if ref.name == "main"), "")
        files = _files(api, final_repo, main or "main")
        found.revisions.append(ReleaseRevision(model, final_repo, "main", main, None, files))
    return found
