"""Checkpoint dynamics: how a model's weights (and, given text, its loss) change from revision to revision.

`checkpoint_dynamics(model)` walks the revisions of a local suite export (`<suite>/<name>`, whose intermediate
checkpoints are `checkpoints/step<N>/`; layout in `spectra_hf.checkpoints.exports`) or of a Hub repo with `step<N>`
branches, in step order, and returns one tidy table (`COLUMNS`), one row per revision x layer x projection x
statistic:

    TriLM      minus_fraction, zero_fraction, plus_fraction   shares of the matrix's digits T
               scale                                          one row per scale shard (`shard` column)
               flip_fraction                                  digits whose state changed since the previous revision
               flip_zero_fraction, flip_sign_fraction         ... between 0 and +-1, and between +1 and -1
    FloatLM    weight_norm                                    Frobenius norm of the weight
    (QuantLM)  relative_change                                ||W - W_prev|| / ||W_prev||
    any, text  loss, perplexity, bits_per_byte                on --text (no layer / projection)

TriLM statistics are counted on the packed 1.6-bit bytes (`spectra_hf.analysis.packed_counts`); no float weight is
built. Memory holds one matrix of two revisions at a time; a Hub repo is downloaded one revision at a time into a
cache directory that never holds more than two revisions (the previous one is deleted once the next is analysed).
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers.utils import logging

from spectra_hf.analysis.packed_counts import digit_counts, flip_counts
from spectra_hf.errors import CheckpointError, ConfigError

COLUMNS = ("model", "revision", "step", "layer", "projection", "shard", "statistic", "value", "numel")
TERNARY_STATISTICS = (
    "minus_fraction", "zero_fraction", "plus_fraction", "scale",
    "flip_fraction", "flip_zero_fraction", "flip_sign_fraction",
)  # fmt: skip
FLOAT_STATISTICS = ("weight_norm", "relative_change")
LOSS_STATISTICS = ("loss", "perplexity", "bits_per_byte")
_STEP_RE = re.compile(r"^step(\d+)$")
logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class Revision:
    """One revision to analyse: `name` is `step<N>` or `main`; `step` is its optimizer step when known."""

    name: str
    step: int | None


@dataclass(frozen=True)
class RevisionDone:
    """Passed to `on_revision` after each revision is analysed, while it (and the previous one) is still on disk.

    Attributes:
        revision: the revision just analysed.
        index: its position in the run (0-based), of `count`.
        path: the directory it was read from.
        cache_dir: where Hub revisions are downloaded (None for a local export).
    """

    revision: Revision
    index: int
    count: int
    path: Path
    cache_dir: Path | None


def _sort_key(revision: Revision) -> tuple[float, bool, str]:
    """Step order; main after a step<N> of the same step, and last when its step is unknown."""
    return (math.inf if revision.step is None else revision.step, revision.name == "main", revision.name)


class LocalExport:
    """The revisions of a local suite export: `checkpoints/step<N>/`, then the export itself (`main`)."""

    def __init__(self, path: Path) -> None:
        from spectra_hf.checkpoints.exports import CHECKPOINTS_DIR

        path = path.expanduser()
        if path.name == CHECKPOINTS_DIR:  # the checkpoints/ folder itself was named
            path = path.parent
        self.root = path
        self.label = path.name
        self.cache_dir: Path | None = None

    def revisions(self) -> list[Revision]:
        from spectra_hf.checkpoints.exports import EXPORT_INFO_FILE, checkpoint_steps, read_export_info

        found = [Revision(f"step{step}", step) for step in checkpoint_steps(self.root.parent, self.root.name)]
        if (self.root / "config.json").is_file():
            step = read_export_info(self.root).step if (self.root / EXPORT_INFO_FILE).is_file() else None
            found.append(Revision("main", step))
        return found

    def fetch(self, revision: Revision) -> Path:
        from spectra_hf.evaluation.pretrained import resolve_local

        return resolve_local(self.root, revision.name)

    def release(self, path: Path) -> None:
        """Nothing to free: a local export stays as it is."""


class HubRepo:
    """The `step<N>` branches (and `main`, when it holds a model) of a Hub repo, downloaded one at a time into
    `cache_dir`; `release` deletes a downloaded revision from it (files shared with a revision still cached stay)."""

    def __init__(self, repo_id: str, *, cache_dir: Path, endpoint: str | None, token: str | bool | None) -> None:
        self.repo_id = repo_id
        self.label = repo_id
        self.cache_dir: Path | None = cache_dir
        self.endpoint = endpoint
        self.token = token

    def revisions(self) -> list[Revision]:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            refs = api.list_repo_refs(self.repo_id)
            has_main = api.file_exists(self.repo_id, "config.json", revision="main")
        except RepositoryNotFoundError as error:
            raise CheckpointError(
                f"model {self.repo_id!r} does not exist on {api.endpoint} (or needs a token): check the name, or "
                "pass a local suite export or --endpoint"
            ) from error
        found = [Revision(b.name, int(m.group(1))) for b in refs.branches if (m := _STEP_RE.match(b.name))]
        if has_main:  # a release `_ckpts` repo's main holds only .gitattributes
            found.append(Revision("main", self._main_step(api)))
        return found

    def _main_step(self, api: Any) -> int | None:
        """main's step from its revisions.json (`spectra-hf publish` writes one), so that a main holding the last
        step<N> branch's weights is left out like a local export's; None when main has no such file."""
        from huggingface_hub.errors import EntryNotFoundError

        from spectra_hf.hub.repo_files import REVISIONS_FILE, main_step_of

        # read outside cache_dir: that cache holds at most two revisions' snapshots, and this is not one
        with tempfile.TemporaryDirectory(prefix="spectra-dynamics-revisions-") as scratch:
            try:
                path = api.hf_hub_download(self.repo_id, REVISIONS_FILE, revision="main", cache_dir=scratch)
            except EntryNotFoundError:
                return None
            return main_step_of(Path(path).read_text(encoding="utf-8"))

    def fetch(self, revision: Revision) -> Path:
        from spectra_hf.evaluation.pretrained import download

        return download(
            self.repo_id, revision=revision.name, endpoint=self.endpoint, token=self.token, cache_dir=self.cache_dir
        )

    def release(self, path: Path) -> None:
        from huggingface_hub import scan_cache_dir

        # a snapshot directory is named by its commit; blobs another cached revision links to are kept
        scan_cache_dir(self.cache_dir).delete_revisions(path.name).execute()


def open_source(
    model: str | Path, *, cache_dir: Path, endpoint: str | None = None, token: str | bool | None = None
) -> LocalExport | HubRepo:
    """A local suite export if `model` is a directory, else a Hub repo id."""
    path = Path(model).expanduser()
    if path.is_dir():
        return LocalExport(path)
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(model)):
        raise ConfigError(
            f"model {model} is neither a suite export directory nor a Hub repo id: pass e.g. suite/TriLM_99M (its "
            "checkpoints/ holds step<N>/) or SpectraSuite/TriLM_99M"
        )
    return HubRepo(str(model), cache_dir=cache_dir, endpoint=endpoint, token=token)


def select_revisions(available: list[Revision], wanted: Sequence[str] | None, *, where: str) -> list[Revision]:
    """`available` in step order (main last when its step is unknown), restricted to `wanted` names if given."""
    ordered = sorted(available, key=_sort_key)
    if not ordered:
        raise CheckpointError(f"{where} has no revisions to analyse: no checkpoints/step<N>/ or step<N> branches")
    if wanted is None:
        steps = {revision.step for revision in ordered if revision.name != "main"}
        main = [r for r in ordered if r.name == "main" and r.step is not None and r.step in steps]
        if main:  # a run that also exported its last step: the same weights twice
            logger.info("main is step %d, which step%d already holds: left out (pass --revisions to keep it)",
                        main[0].step, main[0].step)  # fmt: skip
            ordered = [r for r in ordered if r.name != "main"]
        return ordered
    by_name = {revision.name: revision for revision in ordered}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ConfigError(
            f"revision(s) {', '.join(unknown)} do not exist in {where}: available are "
            f"{', '.join(r.name for r in ordered)}"
        )
    return sorted({by_name[name] for name in wanted}, key=_sort_key)


# ---- statistics of one revision (and its change from the previous one) ---------------------------------------------


def _projections(checkpoint: Any) -> Iterator[tuple[int, str, tuple[int, int]]]:
    from spectra_hf.modeling.checkpoint_checks import linear_shapes

    shapes = linear_shapes(checkpoint.architecture)
    for layer in range(int(checkpoint.architecture.num_hidden_layers)):
        for path, shape in shapes.items():
            yield layer, path, shape


def _packed(checkpoint: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(packed bytes uint8 [ceil(numel / 5)], scales float64 [shards]) of ternary weight `name` (`P.weight`)."""
    prefix = name.removesuffix(".weight")
    if checkpoint.kind == "trilm-packed":
        packed = checkpoint.tensor(f"{prefix}.weight_packed").numpy()
        scales = checkpoint.tensor(f"{prefix}.weight_scale").double().numpy()
        return packed, scales
    # latent or original-release TriLM: the digits come from the float weights; pack them to count them the same way
    from spectra_hf.modeling.packing import pack_ternary

    ternary = checkpoint.weight(name)
    return pack_ternary(ternary.digits).numpy(), ternary.scales.double().numpy()


def _check_pair(checkpoint: Any, previous: Any) -> None:
    if previous.family != checkpoint.family or previous.config.get("num_hidden_layers") != checkpoint.config.get(
        "num_hidden_layers"
    ):
        raise CheckpointError(
            f"{checkpoint.path} ({checkpoint.family}, {checkpoint.config.get('num_hidden_layers')} layers) is not "
            f"another revision of {previous.path} ({previous.family}, {previous.config.get('num_hidden_layers')} "
            "layers): analyse one model's revisions at a time"
        )


def ternary_rows(checkpoint: Any, previous: Any | None) -> Iterator[tuple[int, str, int | None, str, float, int]]:
    """(layer, projection, shard, statistic, value, numel) of a TriLM revision, flips against `previous`."""
    for layer, path, (rows, cols) in _projections(checkpoint):
        name = f"model.layers.{layer}.{path}.weight"
        numel = rows * cols
        packed, scales = _packed(checkpoint, name)
        counts = digit_counts(packed, numel=numel, what=f"{checkpoint.path}: {name}")
        yield layer, path, None, "minus_fraction", counts.minus / numel, numel
        yield layer, path, None, "zero_fraction", counts.zero / numel, numel
        yield layer, path, None, "plus_fraction", counts.plus / numel, numel
        for shard, scale in enumerate(scales.tolist()):
            yield layer, path, shard, "scale", scale, numel
        if previous is None:
            continue
        before, _ = _packed(previous, name)
        flips = flip_counts(before, packed, numel=numel, what=f"{checkpoint.path}: {name}")
        yield layer, path, None, "flip_fraction", flips.flipped / numel, numel
        yield layer, path, None, "flip_zero_fraction", flips.zero_sign / numel, numel
        yield layer, path, None, "flip_sign_fraction", flips.sign / numel, numel


def float_rows(checkpoint: Any, previous: Any | None) -> Iterator[tuple[int, str, int | None, str, float, int]]:
    """(layer, projection, shard, statistic, value, numel) of a FloatLM / QuantLM revision, change from `previous`."""
    if (checkpoint.config.get("quantization_config") or {}).get("quant_method"):
        raise CheckpointError(
            f"{checkpoint.path} holds packed quantized weights (GPTQ): dynamics reads float weights; export the "
            "QuantLM with `spectra-hf quantize ... --format unpacked` (or use a *_Unpacked release repo)"
        )
    for layer, path, (rows, cols) in _projections(checkpoint):
        name = f"model.layers.{layer}.{path}.weight"
        weight = checkpoint.tensor(name).double()  # [out, in]
        norm = float(weight.norm())
        yield layer, path, None, "weight_norm", norm, rows * cols
        if previous is not None:
            before = previous.tensor(name).double()  # [out, in]
            before_norm = float(before.norm())
            change = float((weight - before).norm()) / before_norm if before_norm else math.nan
            yield layer, path, None, "relative_change", change, rows * cols


def loss_rows(path: Path, texts: list[str], *, max_length: int | None) -> dict[str, float]:
    """Loss (nats per token), perplexity and bits per byte of the model at `path` on `texts`."""
    from spectra_hf.evaluation.pretrained import load_pretrained
    from spectra_hf.evaluation.text_perplexity import perplexity

    model, tokenizer = load_pretrained(path)
    scores = perplexity(model, tokenizer, texts, max_length=max_length, show_progress=False)
    del model
    return {
        "loss": scores["nll_per_token"],
        "perplexity": scores["perplexity"],
        "bits_per_byte": scores["bits_per_byte"],
    }


def checkpoint_dynamics(
    model: str | Path,
    *,
    revisions: Sequence[str] | None = None,
    text: str | Path | None = None,
    max_documents: int | None = None,
    max_length: int | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    on_revision: Callable[[RevisionDone], None] | None = None,
    progress: bool = True,
):
    """The tidy table (pandas DataFrame, `COLUMNS`) of `model`'s revisions: see the module docstring.

    Args:
        model: a local suite export directory (or its `checkpoints/` folder), or a Hub repo id with step branches.
        revisions: names to analyse (`step100`, `main`, ...); default: all, in step order (`main` left out when a
            `step<N>` holds the same step).
        text: a text file (anything `spectra-hf eval --perplexity-data` reads) to score each revision on.
        max_documents / max_length: passed to the perplexity evaluation (documents read; tokens per window).
        endpoint / token: the Hub (default: `HF_ENDPOINT`, the usual token sources).
        cache_dir: where Hub revisions are downloaded (default: a temporary directory, removed at the end); it never
            holds more than two of this run's revisions.
        on_revision: called with a `RevisionDone` after each revision (progress, disk checks).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from spectra_hf.checkpoints.io import Checkpoint

    own_cache = cache_dir is None
    cache = Path(tempfile.mkdtemp(prefix="spectra-dynamics-")) if cache_dir is None else Path(cache_dir)
    texts = None
    if text is not None:
        from spectra_hf.evaluation.text_perplexity import load_texts

        texts = load_texts(str(text), max_documents=max_documents)
    records: list[tuple[Any, ...]] = []
    try:
        source = open_source(model, cache_dir=cache, endpoint=endpoint, token=token)
        chosen = select_revisions(source.revisions(), revisions, where=str(model))
        previous: Any | None = None
        previous_path: Path | None = None
        for index, revision in enumerate(tqdm(chosen, desc="revisions", unit="rev", disable=not progress)):
            path = source.fetch(revision)
            checkpoint = Checkpoint(path)
            if previous is not None:
                _check_pair(checkpoint, previous)
            rows = ternary_rows if checkpoint.family == "trilm" else float_rows
            for layer, projection, shard, statistic, value, numel in rows(checkpoint, previous):
                records.append((source.label, revision.name, revision.step, layer, projection, shard, statistic,
                                value, numel))  # fmt: skip
            if texts is not None:
                for statistic, value in loss_rows(path, texts, max_length=max_length).items():
                    records.append((source.label, revision.name, revision.step, None, None, None, statistic, value,
                                    None))  # fmt: skip
            if on_revision is not None:
                on_revision(RevisionDone(revision, index, len(chosen), path, source.cache_dir))
            if previous_path is not None and previous_path != path:  # two branches may share one commit
                source.release(previous_path)
            previous, previous_path = checkpoint, path
        if previous_path is not None:
            source.release(previous_path)
    finally:
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    for column in ("step", "layer", "shard", "numel"):
        frame[column] = frame[column].astype("Int64")
    return frame


TABLE_STEM = "dynamics"


def write_dynamics(frame: Any, out: str | Path, *, overwrite: bool = False) -> list[Path]:
    """The table (`dynamics.csv`, `dynamics.parquet`) and every figure it has data for (PNG) into `out`."""
    from spectra_hf.analysis.figures import dynamics_figures, save_figure
    from spectra_hf.analysis.output import prepare_output_dir, write_table

    figures = dynamics_figures(frame)
    names = [f"{TABLE_STEM}.csv", f"{TABLE_STEM}.parquet", *figures]
    directory = prepare_output_dir(out, names, overwrite=overwrite)
    written = write_table(frame, directory, TABLE_STEM)
    written += [save_figure(figure, directory / name) for name, figure in figures.items()]
    return written
