"""Evaluation results of several suite models gathered into one table, for the paper's headline comparisons.

Sources: `results.json` files of `spectra-hf eval` (`spectra_hf.evaluation.results`), model cards (README.md with a
`model-index`, as `spectra-hf publish --evals` writes them), directories holding either, and the cards of a Hub
org's repos. Each model-index row becomes one row of `COLUMNS`; the model's family, size, bit width, parameter count
and size in bits come from the registry (`spectra_hf.suite`), by the model's suite name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from transformers.utils import logging

from spectra_hf.errors import DataError, HubError, SpectraError
from spectra_hf.suite import get_model

logger = logging.get_logger(__name__)

COLUMNS = ("model", "family", "size", "bits", "params", "size_bits", "metric", "value", "revision", "source")
CARD_FILE = "README.md"


def metric_label(row: dict[str, Any]) -> str:
    """`<dataset> <metric type>` of a model-index row, e.g. "arc_easy acc", "eval.txt perplexity"."""
    return f"{row.get('dataset_name') or row.get('task_name')} {row['metric_type']}"


def _rows(name: str, revision: str, index: Iterable[dict[str, Any]], source: str) -> Iterator[tuple[Any, ...]]:
    try:
        model = get_model(name.rstrip("/").split("/")[-1])
    except SpectraError as error:  # get_model's unknown-name error
        raise DataError(f"{source}: {error}") from error
    for row in index:
        yield (
            model.name, model.family, model.size, model.bits, model.params, model.size_bits,
            metric_label(row), float(row["metric_value"]), revision, source,
        )  # fmt: skip


def _card_rows(path: Path, name: str) -> Iterator[tuple[Any, ...]]:
    from huggingface_hub import ModelCard

    data = ModelCard.load(path).data
    rows = [
        {"dataset_name": r.dataset_name, "metric_type": r.metric_type, "metric_value": r.metric_value}
        for r in (data.eval_results or [])
    ]
    yield from _rows(getattr(data, "model_name", None) or name, "main", rows, str(path))


def _file_rows(path: Path) -> Iterator[tuple[Any, ...]]:
    from spectra_hf.evaluation.results import read_results

    if path.name == CARD_FILE:
        yield from _card_rows(path, path.parent.name)
        return
    results = read_results(path)
    yield from _rows(str(results["model"]), str(results.get("revision") or "main"), results["model_index"], str(path))


def _directory_files(directory: Path) -> list[Path]:
    """Results files (`*results.json`) and model cards (README.md) anywhere under `directory`."""
    found = [p for p in directory.rglob("*.json") if p.name.endswith("results.json")]
    found += list(directory.rglob(CARD_FILE))
    return sorted(found)


def _org_rows(org: str, *, endpoint: str | None, token: str | bool | None) -> Iterator[tuple[Any, ...]]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError

    api = HfApi(endpoint=endpoint, token=token)
    repos = [info.id for info in api.list_models(author=org)]
    if not repos:
        raise HubError(f"no repos under {org!r} on {api.endpoint}: check the org name and --endpoint")
    for repo_id in sorted(repos):
        if not re.fullmatch(r"(TriLM|FloatLM|QuantLM)_[0-9.]+[MB](_\d+bit)?", repo_id.split("/")[-1]):
            continue  # unpacked copies, manifests and other repos of the org
        try:
            card = Path(api.hf_hub_download(repo_id, CARD_FILE))
        except EntryNotFoundError:
            logger.warning("%s has no model card; skipped", repo_id)
            continue
        yield from _card_rows(card, repo_id)


def collect_results(
    sources: Iterable[str | Path] = (),
    *,
    org: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
):
    """One pandas DataFrame (`COLUMNS`, plus `size_gbit` and `params_m` for the figures) of every model-index row of
    `sources` (results files, cards, directories) and of the cards of `org`'s suite repos."""
    import pandas as pd

    records: list[tuple[Any, ...]] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            files = _directory_files(path)
            if not files:
                raise DataError(f"{path} holds no results.json files and no model cards (README.md)")
        elif path.is_file():
            files = [path]
        else:
            raise DataError(f"{path} does not exist: pass results.json files of `spectra-hf eval`, cards or folders")
        for file in files:
            records.extend(_file_rows(file))
    if org is not None:
        records.extend(_org_rows(org, endpoint=endpoint, token=token))
    table = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    if table.empty:
        raise DataError("no evaluation results found: the results files and cards hold no model-index rows")
    table["bits"] = table["bits"].astype("Int64")
    table["size_gbit"] = table["size_bits"] / 1e9
    table["params_m"] = table["params"] / 1e6
    return table


def plotted_rows(table: Any) -> Any:
    """The rows a figure shows: `main` revisions only, one value per model and metric (the last one given)."""
    main = table[table["revision"] == "main"]
    dropped = len(table) - len(main)
    if dropped:
        logger.warning("%d result rows of intermediate revisions are in the table but not in the figures", dropped)
    duplicated = main.duplicated(["model", "metric"], keep="last")
    if duplicated.any():
        logger.warning(
            "several results for %s; the figures use the last one given",
            ", ".join(sorted({f"{r.model} {r.metric}" for r in main[duplicated].itertuples()})),
        )
    return main[~duplicated]


def metric_slug(metric: str) -> str:
    """A file name for a metric: "eval.txt perplexity" -> "eval_txt_perplexity"."""
    return re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_").lower()


def plot_suite(table: Any, out: str | Path, *, overwrite: bool = False) -> list[Path]:
    """One figure (`<metric>.png`) and the data behind it (`<metric>.csv`) per metric of a `collect_results`
    table, plus every row gathered (`results.csv`), into `out`."""
    from spectra_hf.analysis.figures import save_figure, suite_figure
    from spectra_hf.analysis.output import prepare_output_dir, write_table

    shown = plotted_rows(table)
    metrics = list(dict.fromkeys(shown["metric"]))
    slugs = {metric: metric_slug(metric) for metric in metrics}
    names = ["results.csv", *(f"{slug}.{ext}" for slug in slugs.values() for ext in ("png", "csv"))]
    directory = prepare_output_dir(out, names, overwrite=overwrite)
    written = write_table(table, directory, "results", parquet=False)
    for metric, slug in slugs.items():
        rows = shown[shown["metric"] == metric].sort_values(["family", "bits", "params"])
        written += write_table(rows, directory, slug, parquet=False)
        written.append(save_figure(suite_figure(rows, metric), directory / f"{slug}.png"))
    return written
