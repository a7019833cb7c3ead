"""The publish plan: which repos, branches and files the suite directory becomes on the Hub.

Built from the suite registry and the suite directory (layout in `spectra_hf.checkpoints.exports`), without any network:

    <org>/<name>              one repo per suite model (54): `main` = the final export + model card + revisions.json,
                              one branch `step<N>` per intermediate checkpoint (a checkpoint card each)
    <org>/TriLM_<size>_Unpacked   the TriLM release format (plain fp16 Llama) for stock transformers, `main` only
    collections               one per family, listing its repos

A plan also says what is missing from the suite directory; publishing refuses an incomplete plan unless the user
asks for a partial publish explicitly.

Why a sibling repo for the unpacked TriLM and not a branch: `SpectraSuite/TriLM_<size>_Unpacked` is the name users
already load with stock transformers, a repo holds one model_type (trilm packed vs llama) so `from_pretrained`
needs no `revision=` to pick a format, and `revision=` keeps meaning one thing: the training step.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import logging

from spectra_hf.cards import Revision, render_checkpoint_card, render_model_card
from spectra_hf.checkpoints.exports import (
    CHECKPOINTS_DIR,
    EXPORT_INFO_FILE,
    ExportInfo,
    checkpoint_dir,
    checkpoint_steps,
    missing_checkpoint_steps,
    model_dir,
    read_export_info,
)
from spectra_hf.checkpoints.io import read_config
from spectra_hf.errors import CheckpointError, ConfigError, HubError, SpectraError
from spectra_hf.hub.repo_files import (
    CARD_FILE,
    PlanFile,
    file_on_disk,
    generated_file,
    has_tokenizer,
    human_size,
    revisions_json,
)
from spectra_hf.modeling.checkpoint_checks import linear_shapes
from spectra_hf.suite import (
    FAMILY_PREFIX,
    QUANT_BITS,
    SIZES,
    TERNARY_BITS,
    SuiteModel,
    all_models,
    float_params,
    linear_params,
)

logger = logging.get_logger(__name__)

STAGING_DIR = ".publish-staging"  # inside the suite directory: converted exports (unpacked TriLM), reused across runs
_STAMP_FILE = ".source-stamp.json"
# Files of an export directory that are not published: local bookkeeping and the card we render ourselves.
_NOT_PUBLISHED = {EXPORT_INFO_FILE, CARD_FILE}
_WEIGHT_SUFFIX = ".safetensors"
_UNPACKED_SHARD_BYTES = 2 << 30  # convert_checkpoint's default largest shard


@dataclass
class BranchPlan:
    """One branch of a repo and the exact set of files it must hold (anything else on it is deleted)."""

    name: str
    files: list[PlanFile]
    step: int | None = None
    tokens_seen: int | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class RepoPlan:
    """One Hub repo: `main` first, then the checkpoint branches by ascending step."""

    repo_id: str
    model: SuiteModel
    variant: str  # "release" or "unpacked"
    branches: list[BranchPlan]

    @property
    def size(self) -> int:
        return sum(b.size for b in self.branches)


@dataclass
class CollectionPlan:
    """A Hub collection of one family's repos."""

    title: str
    description: str
    items: list[str]


@dataclass
class PublishPlan:
    """Everything a publish run creates, and what the suite directory lacks for a complete suite."""

    org: str
    suite_dir: Path
    repos: list[RepoPlan]
    collections: list[CollectionPlan]
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def estimated_files(self) -> list[str]:
        """`repo_id/path` of every file whose size is an estimate (conversions a `convert=False` plan did not run)."""
        return [f"{r.repo_id}/{f.path_in_repo}" for r in self.repos for b in r.branches for f in b.files if f.estimated]

    def totals(self) -> dict[str, int]:
        """bytes, repos, branches (main included) and commits (one per branch when all of it is new)."""
        branches = sum(len(r.branches) for r in self.repos)
        return {
            "bytes": sum(r.size for r in self.repos),
            "repos": len(self.repos),
            "branches": branches,
            "commits": branches,
            "files": sum(len(b.files) for r in self.repos for b in r.branches),
            "collections": len(self.collections),
        }

    def describe(self) -> str:
        """A human-readable listing of the plan (what `spectra-hf publish --dry-run` prints)."""
        lines = [f"publish plan: {self.suite_dir} -> {self.org}"]
        for repo in self.repos:
            steps = [b.name for b in repo.branches if b.name != "main"]
            span = f"{steps[0]} .. {steps[-1]}" if steps else "-"
            lines.append(
                f"  {repo.repo_id:<40} {len(repo.branches):>4} branches ({span})  {human_size(repo.size):>10}"
            )
        for collection in self.collections:
            lines.append(f"  collection {collection.title!r}: {len(collection.items)} repos")
        totals = self.totals()
        lines.append(
            f"total: {totals['repos']} repos, {totals['branches']} branches, {totals['commits']} commits at most, "
            f"{totals['files']} files, {human_size(totals['bytes'])} ({totals['bytes']} bytes), "
            f"{totals['collections']} collections"
        )
        if self.estimated_files:
            lines.append(
                f"estimated: {len(self.estimated_files)} files of the unpacked TriLM repos are sized from their "
                "configs (fp16 weights), not converted; publishing converts them"
            )
        if self.missing:
            lines.append(f"missing ({len(self.missing)}):")
            lines.extend(f"  - {item}" for item in self.missing)
        return "\n".join(lines)


HF_HUB_URL = "https://huggingface.co"
NO_TARGET_MESSAGE = (
    "no publish target given: pass --endpoint URL, set HF_ENDPOINT, log in to the Hub (--token, HF_TOKEN or "
    "`hf auth login`), or pass --hub-root DIR to publish into a local Hub store"
)


@dataclass(frozen=True)
class PublishTarget:
    """Where a publish run goes: a Hub at `endpoint`, or (endpoint None) a local Hub store at `hub_root` that the run
    serves itself. `chosen_by` names the option or setting that decided it."""

    endpoint: str | None
    hub_root: Path | None
    chosen_by: str

    def describe(self) -> str:
        where = self.endpoint if self.endpoint is not None else f"the local Hub store {self.hub_root}"
        return f"{where} (chosen by {self.chosen_by})"


def choose_target(
    *, endpoint: str | None, hub_root: Path | None, token: str | None, environ: Mapping[str, str] = os.environ
) -> PublishTarget:
    """The one target a publish run may use; nothing is published without an explicit one.

    In order: `endpoint` (--endpoint), `hub_root` (--hub-root: a local store), HF_ENDPOINT, a token for the real Hub
    (--token, HF_TOKEN or a saved login, which the caller resolves into `token`). Raises HubError when none is given,
    ConfigError when both --endpoint and --hub-root are.
    """
    if endpoint and hub_root is not None:
        raise ConfigError(f"--endpoint {endpoint} and --hub-root {hub_root} name two targets: pass one of them")
    if endpoint:
        return PublishTarget(endpoint=endpoint.rstrip("/"), hub_root=None, chosen_by="--endpoint")
    if hub_root is not None:
        return PublishTarget(endpoint=None, hub_root=Path(hub_root), chosen_by="--hub-root")
    if environ.get("HF_ENDPOINT"):
        return PublishTarget(endpoint=environ["HF_ENDPOINT"].rstrip("/"), hub_root=None, chosen_by="HF_ENDPOINT")
    if token:
        return PublishTarget(
            endpoint=HF_HUB_URL, hub_root=None, chosen_by="a Hub token (--token, HF_TOKEN or `hf auth login`)"
        )
    raise HubError(NO_TARGET_MESSAGE)


def check_repo_id(repo_id: str) -> None:
    """Refuse a repo id the Hub would reject, naming the part to change."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ConfigError(
            f"invalid Hub repo id {repo_id!r}: {error} Pick an --org made of letters, digits, '-', '_' and '.'"
        ) from None


def export_files(directory: Path) -> dict[str, Path]:
    """path_in_repo -> local file for everything an export directory publishes.

    Left out: the checkpoints/ folder (published as branches), spectra_export.json (local bookkeeping), README.md
    (the card is rendered) and hidden files.
    """
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or relative.parts[0] == CHECKPOINTS_DIR or any(p.startswith(".") for p in relative.parts):
            continue
        if relative.as_posix() in _NOT_PUBLISHED:
            continue
        files[relative.as_posix()] = path
    return files


def export_problems(directory: Path, *, name: str, step: int | None) -> list[str]:
    """Why `directory` is not a complete export of model `name` (at checkpoint `step`); empty when it is."""
    if not directory.is_dir():
        return [f"{directory} is missing"]
    problems = []
    if not (directory / "config.json").is_file():
        problems.append(f"{directory}/config.json is missing")
    weights = [p for p in directory.iterdir() if p.name.endswith(_WEIGHT_SUFFIX)]
    if not weights:
        problems.append(f"{directory} has no *.safetensors weights")
    for index in directory.glob(f"*{_WEIGHT_SUFFIX}.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, KeyError) as error:
            problems.append(f"{index} is corrupt ({error})")
            continue
        problems.extend(f"{directory}/{shard} (listed in {index.name}) is missing" for shard in sorted(shards)
                        if not (directory / shard).is_file())
    try:
        info = read_export_info(directory)
    except SpectraError as error:
        return [*problems, str(error)]
    if info.name != name:
        problems.append(f"{directory}/{EXPORT_INFO_FILE} says it is {info.name!r}, not {name!r}")
    if step is not None and info.step != step:
        problems.append(f"{directory}/{EXPORT_INFO_FILE} says step {info.step}, but the directory is step{step}")
    return problems


def _tokens_seen(info: ExportInfo, model: SuiteModel) -> int:
    # Exports from the trainer record tokens_seen; older ones fall back to the registry's batch size.
    if info.tokens_seen is not None:
        return info.tokens_seen
    assert info.step is not None, "export_problems checked that a checkpoint's export records its step"
    return info.step * model.batch_tokens


def _model_repo(
    suite_dir: Path, model: SuiteModel, *, org: str, evals: Mapping[str, Any] | None, missing: list[str]
) -> RepoPlan | None:
    directory = model_dir(suite_dir, model.name)
    problems = export_problems(directory, name=model.name, step=None)
    if problems:
        missing.extend(f"{model.name}: {p}" for p in problems)
        return None
    repo_id = f"{org}/{model.name}"
    info = read_export_info(directory)
    revisions, branches = [], []
    for step in checkpoint_steps(suite_dir, model.name):
        ckpt = checkpoint_dir(suite_dir, model.name, step)
        problems = export_problems(ckpt, name=model.name, step=step)
        if problems:
            missing.extend(f"{model.name} checkpoint step{step}: {p}" for p in problems)
            continue
        ckpt_info = read_export_info(ckpt)
        revision = Revision(branch=ckpt_info.branch, step=step, tokens_seen=_tokens_seen(ckpt_info, model))
        ckpt_config = read_config(ckpt)
        card = render_checkpoint_card(model=model, org=org, revision=revision, config=ckpt_config, export=ckpt_info)
        files = [file_on_disk(p, local) for p, local in export_files(ckpt).items()] + [generated_file(CARD_FILE, card)]
        revisions.append(revision)
        branches.append(BranchPlan(name=revision.branch, files=files, step=step, tokens_seen=revision.tokens_seen))
    missing.extend(
        f"{model.name} checkpoint step{step}: planned by its training run ({CHECKPOINTS_DIR}/planned_steps.json) but "
        "not exported; resume the run (--resume_from_checkpoint true) to write it"
        for step in missing_checkpoint_steps(suite_dir, model.name)
    )
    if model.family != "quantlm" and not revisions:
        missing.append(
            f"{model.name}: no intermediate checkpoints under {directory / CHECKPOINTS_DIR} "
            "(a trained model publishes its step<N> exports as branches)"
        )
    exported = export_files(directory)
    config = read_config(directory)
    card = render_model_card(
        model=model,
        org=org,
        config=config,
        revisions=revisions,
        evals=evals,
        has_tokenizer=has_tokenizer(exported),
        export=info,
    )
    main_files = [file_on_disk(p, local) for p, local in exported.items()]
    main_files += [
        generated_file(CARD_FILE, card),
        revisions_json(repo_id, main_step=info.step, main_tokens_seen=info.tokens_seen, revisions=revisions),
    ]
    main = BranchPlan(name="main", files=main_files, step=info.step, tokens_seen=info.tokens_seen)
    return RepoPlan(repo_id=repo_id, model=model, variant="release", branches=[main, *branches])


def _source_stamp(directory: Path) -> dict[str, list[int]]:
    """Size and mtime of every file of an export: a staged conversion is reused while this is unchanged."""
    return {
        p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(directory.iterdir()) if p.is_file()
    }


def is_staged(source: Path, staged: Path) -> bool:
    """Whether `staged` holds a finished conversion of the export `source` as it is now (reads, writes nothing)."""
    stamp = staged / _STAMP_FILE
    return stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == _source_stamp(source)


def stage_unpacked(source: Path, staged: Path) -> bool:
    """Convert the TriLM export `source` to the release format (plain fp16 Llama) at `staged`, unless already done.

    Returns True when it converted. The stamp is written last, so an interrupted conversion is redone.
    """
    from spectra_hf.checkpoints.convert import convert_checkpoint

    if is_staged(source, staged):
        return False
    logger.info(f"converting {source} to the release format (plain fp16 Llama) in {staged}")
    stamp = staged / _STAMP_FILE
    expected = _source_stamp(source)
    stamp.unlink(missing_ok=True)  # convert replaces only a directory holding nothing but its own earlier output
    convert_checkpoint(source, staged, to="unpacked", progress=False, overwrite=True)
    stamp.write_text(json.dumps(expected, sort_keys=True), encoding="utf-8")
    return True


def _header_bytes(config: dict) -> int:
    """About what the safetensors headers of the release format take: per tensor, its JSON entry (name, dtype, shape,
    offsets: ~60 bytes besides the name) and its sha256 digest in `__metadata__` (the name again, JSON-escaped
    inside a string, and 64 hex digits: ~75 bytes besides it)."""
    layers = int(config["num_hidden_layers"])
    paths = [*linear_shapes(config), "input_layernorm", "post_attention_layernorm"]
    per_layer = [f"model.layers.{layers - 1}.{path}.weight" for path in paths]
    names = [*per_layer * layers, "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    return sum(2 * len(name) + 135 for name in names)


def _estimated_unpacked_files(source: Path) -> dict[str, PlanFile]:
    """What converting the TriLM export `source` to the release format would publish, sized without converting:
    fp16 weights (2 bytes per parameter of its config, in convert's 2 GiB shards) and the export's other files."""
    config = read_config(source)
    weight_bytes = 2 * (linear_params(config) + float_params(config))
    shards = max(1, math.ceil(weight_bytes / _UNPACKED_SHARD_BYTES))
    names = (
        ["model.safetensors"]
        if shards == 1
        else [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    )
    size = (weight_bytes + _header_bytes(config)) // shards
    files = {name: PlanFile(name, size=size, estimated=True) for name in names}
    for path_in_repo, local in export_files(source).items():
        if not path_in_repo.endswith((_WEIGHT_SUFFIX, f"{_WEIGHT_SUFFIX}.index.json", ".py")):
            files[path_in_repo] = PlanFile(path_in_repo, size=local.stat().st_size, estimated=True)
    return files


def _unpacked_repo(suite_dir: Path, release: RepoPlan, *, org: str, staging_dir: Path, convert: bool) -> RepoPlan:
    model = release.model
    repo_name = model.unpacked_name
    source, staged = model_dir(suite_dir, model.name), staging_dir / repo_name
    if convert or is_staged(source, staged):
        stage_unpacked(source, staged)
        files = {p: file_on_disk(p, local) for p, local in export_files(staged).items()}
        config = read_config(staged)
    else:
        logger.info(f"{repo_name}: {source} is not converted yet; its files are sized from its config (estimated)")
        files = _estimated_unpacked_files(source)
        config = {**read_config(source), "model_type": "llama"}
    card = render_model_card(
        model=model,
        org=org,
        config=config,
        variant="unpacked",
        has_tokenizer=has_tokenizer(files),
        export=read_export_info(model_dir(suite_dir, model.name)),
    )
    main = BranchPlan(
        name="main",
        files=[*files.values(), generated_file(CARD_FILE, card)],
        step=release.branches[0].step,
        tokens_seen=release.branches[0].tokens_seen,
    )
    return RepoPlan(repo_id=f"{org}/{repo_name}", model=model, variant="unpacked", branches=[main])


def _collection_description(family: str) -> str:
    sizes = f"{next(iter(SIZES))} to {list(SIZES)[-1]}"
    if family == "trilm":
        return f"Ternary ({TERNARY_BITS}-bit) Spectra language models, {sizes}, with intermediate checkpoints"
    if family == "floatlm":
        return f"fp16 Spectra language models, {sizes}, trained on the same tokens as TriLM"
    return f"GPTQ {'/'.join(map(str, QUANT_BITS))}-bit quantizations of the Spectra FloatLMs, {sizes}"


def _collections(org: str, repos: Sequence[RepoPlan]) -> list[CollectionPlan]:
    collections = []
    for family, prefix in FAMILY_PREFIX.items():
        items = [r.repo_id for r in repos if r.model.family == family]
        if items:
            collections.append(
                CollectionPlan(title=f"Spectra {prefix}", description=_collection_description(family), items=items)
            )
    return collections


def build_plan(
    suite_dir: str | Path,
    *,
    org: str,
    evals: Mapping[str, Mapping[str, Any]] | None = None,
    models: Sequence[str] | None = None,
    unpacked: bool = True,
    staging_dir: str | Path | None = None,
    convert: bool = True,
) -> PublishPlan:
    """Plan the publication of a suite directory under `org`, without any network.

    Args:
        suite_dir: directory laid out as `spectra_hf.checkpoints.exports` describes (one export per model,
            checkpoints inside).
        org: Hub user or organization the repos go to (e.g. "SpectraSuite").
        evals: model name -> {"task/metric": value}, or -> a `spectra-hf eval` results document; shown in the
            cards and their model-index (see `spectra_hf.cards.eval_results`).
        models: restrict the plan to these model names (default: all 54 of the registry). Models left out are not
            reported as missing.
        unpacked: also plan `<org>/TriLM_<size>_Unpacked` per TriLM: the release format (plain fp16 Llama) that
            stock transformers loads. Converting writes under `staging_dir` once; later plans reuse it.
        staging_dir: where converted exports are kept (default: SUITE_DIR/.publish-staging).
        convert: run the conversions the unpacked repos need. False writes nothing anywhere (what
            `publish --dry-run` plans): a conversion not staged yet is planned with estimated sizes
            (`PlanFile.estimated`), and such a plan cannot be published.

    Returns:
        The plan; `plan.missing` lists every absent or incomplete export and checkpoint.
    """
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        raise CheckpointError(f"suite directory {suite_dir} does not exist: export the models there first")
    registry = all_models()
    known = {m.name for m in registry}
    unknown = sorted(set(models or ()) - known) + sorted(set(evals or {}) - known)
    if unknown:
        raise ConfigError(f"not suite model names: {', '.join(unknown)} (run `spectra-hf suite` for the list)")
    selected = [m for m in registry if models is None or m.name in models]
    for model in selected:
        check_repo_id(f"{org}/{model.unpacked_name if unpacked and model.family == 'trilm' else model.name}")
    missing: list[str] = []
    repos = []
    for model in selected:
        repo = _model_repo(suite_dir, model, org=org, evals=(evals or {}).get(model.name), missing=missing)
        if repo is not None:
            repos.append(repo)
            if unpacked and model.family == "trilm":
                staging = Path(staging_dir) if staging_dir is not None else suite_dir / STAGING_DIR
                repos.append(_unpacked_repo(suite_dir, repo, org=org, staging_dir=staging, convert=convert))
    return PublishPlan(
        org=org, suite_dir=suite_dir, repos=repos, collections=_collections(org, repos), missing=missing
    )
