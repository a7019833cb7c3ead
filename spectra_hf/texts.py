"""Documents from text sources: the one reader behind training data, GPTQ calibration and perplexity evaluation.

A source is one of
- local files of one kind: `.txt` (one document per line), `.json` / `.jsonl` (JSON lines or a JSON list of
  records), `.csv`, `.parquet`; several files are read in order;
- a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`;
- a dataset name for `datasets.load_dataset`: a Hub id (needs the network or the local cache) or a local
  directory of data files (`datasets` infers the format and splits from the file names);
- an in-memory `datasets.Dataset`.

Every kind is read through `datasets` with the builder named in `TEXT_FILE_BUILDERS`, so `x.jsonl` gives the same
documents to `spectra-hf train`, `quantize --calibration` and `eval --perplexity-data`: the `text_column` value of
each row, rows whose text is empty or only whitespace dropped, the text itself unchanged (not stripped).

Splits: local files have one split; a saved `DatasetDict` or a dataset name with several splits needs `split`
(the one split is taken when there is only one).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectra_hf.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

TEXT_FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_SAVED_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")

TextSource = Any  # str | Path | Sequence[str | Path] | datasets.Dataset (see the module docstring)


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a directory written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and any((path / marker).is_file() for marker in _SAVED_DATASET_MARKERS)


def local_files(source: TextSource) -> list[Path] | None:
    """The local text files `source` names (checked: they exist and share one builder), or None for other kinds."""
    if isinstance(source, (str, Path)):
        candidates = [Path(source).expanduser()]
    elif isinstance(source, Sequence) and source and all(isinstance(item, (str, Path)) for item in source):
        candidates = [Path(item).expanduser() for item in source]
        if len(candidates) == 1:
            return local_files(candidates[0])
    else:
        return None
    if len(candidates) == 1 and (candidates[0].is_dir() or _looks_like_dataset_name(source, candidates[0])):
        return None  # a saved dataset, or a dataset name / data directory for datasets.load_dataset
    missing = [str(path) for path in candidates if not path.is_file()]
    if missing:
        raise DataError(
            f"text file(s) not found: {', '.join(missing)}; give existing .txt/.json/.jsonl/.csv/.parquet files, a "
            "directory written by Dataset.save_to_disk, or a dataset name"
        )
    builders = {TEXT_FILE_BUILDERS.get(path.suffix.lower()) for path in candidates}
    if None in builders or len(builders) > 1:
        raise DataError(
            f"cannot read {', '.join(map(str, candidates))} as text: files must all be one of "
            f"{', '.join(sorted(TEXT_FILE_BUILDERS))}; convert them, or save a dataset with Dataset.save_to_disk"
        )
    return candidates


def _looks_like_dataset_name(source: TextSource, path: Path) -> bool:
    """A string that names no existing path and does not look like one (`org/name`, `wikitext`)."""
    if not isinstance(source, str) or path.exists():
        return False
    return not source.startswith((".", "/", "~")) and not path.suffix


def text_dataset(
    source: TextSource,
    *,
    text_column: str = "text",
    split: str | None = None,
    config: str | None = None,
    streaming: bool = False,
) -> Dataset | IterableDataset:
    """The documents of `source` as a `datasets` dataset with the single column `text_column`, blank rows dropped.

    Args:
        source: see the module docstring.
        text_column: the column holding the text (`.txt` files always give "text", renamed to `text_column`).
        split: the split of a saved `DatasetDict` or a named dataset (None: its only split).
        config: the configuration of a named dataset.
        streaming: stream instead of preparing an Arrow cache (files and dataset names).

    Raises:
        DataError: the source does not exist, cannot be read, has no such column or needs a split.
    """
    import datasets

    files = local_files(source)
    if files is not None:
        builder = TEXT_FILE_BUILDERS[files[0].suffix.lower()]
        try:
            loaded = datasets.load_dataset(
                builder, data_files=[str(path) for path in files], split="train", streaming=streaming
            )
        except (ValueError, datasets.exceptions.DatasetGenerationError) as error:
            raise DataError(f"cannot read {', '.join(map(str, files))} as {builder}: {error}") from error
        if builder == "text" and text_column != "text":
            loaded = loaded.rename_column("text", text_column)
        where = ", ".join(map(str, files))
    elif isinstance(source, (str, Path)) and is_saved_dataset(Path(source).expanduser()):
        loaded = datasets.load_from_disk(str(Path(source).expanduser()))
        where = str(source)
    elif isinstance(source, (str, Path)):
        where = str(source)
        try:
            loaded = datasets.load_dataset(str(source), config, split=split, streaming=streaming)
        except Exception as error:  # datasets raises many types (connection, not found, config) for one cause
            raise DataError(
                f"cannot load dataset {where!r} (config {config}, split {split}): {type(error).__name__}: {error}; "
                "offline, pass local text files or a directory written by Dataset.save_to_disk"
            ) from error
    elif isinstance(source, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict)):
        loaded, where = source, "the in-memory dataset"
    else:
        raise DataError(
            f"cannot read text from a {type(source).__name__}: pass text files, a saved dataset or a dataset name"
        )
    loaded = _one_split(loaded, split=split, where=where)
    columns = loaded.column_names
    if columns is None:  # a streamed file (datasets 5.2): read the columns off the first row
        first = next(iter(loaded), None)
        columns = list(first) if first is not None else [text_column]
    if columns is not None and text_column not in columns:
        raise DataError(
            f"{where} has no column {text_column!r} (columns: {', '.join(columns)}); name its text column with "
            "--text-column (text_column in a recipe)"
        )
    # Name the columns: a streamed local file reports column_names None (datasets 5.2).
    loaded = loaded.select_columns([text_column])
    return loaded.filter(
        lambda batch: [bool(text and text.strip()) for text in batch[text_column]], batched=True, batch_size=1000
    )


def _one_split(loaded: Any, *, split: str | None, where: str) -> Any:
    import datasets

    if not isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return loaded
    if split is not None:
        if split not in loaded:
            raise DataError(f"{where} has no split {split!r} (splits: {', '.join(loaded)}); pick one with --split")
        return loaded[split]
    if len(loaded) != 1:
        raise DataError(f"{where} has splits {', '.join(loaded)}: pick one with --split")
    return next(iter(loaded.values()))


def load_documents(
    source: TextSource,
    *,
    text_column: str = "text",
    split: str | None = None,
    config: str | None = None,
    max_documents: int | None = None,
) -> list[str]:
    """The documents of `source` as a list (the first `max_documents` of them when given).

    Local files are streamed (no Arrow cache is written for a one-off read); see `text_dataset`.
    """
    streaming = local_files(source) is not None
    dataset = text_dataset(source, text_column=text_column, split=split, config=config, streaming=streaming)
    if max_documents is not None:
        dataset = dataset.take(max_documents) if streaming else dataset.select(range(min(max_documents, len(dataset))))
    if streaming:
        return [row[text_column] for row in dataset]
    return list(dataset[text_column])


def describe_source(source: TextSource, *, split: str | None = None) -> str:
    """A one-line description of a text source, recorded in exports (`files:a.txt,b.txt`, `datasets:name[split]`).

    Local files and saved datasets are named by their base names only: exports are published, and an absolute path
    would tell the world the publishing machine's directory layout (and user name).
    """
    files = local_files(source)
    if files is not None:
        return "files:" + ",".join(path.name for path in files)
    if isinstance(source, (str, Path)):
        local = Path(source).expanduser()
        name = local.name if local.exists() else str(source)  # a save_to_disk directory, else a Hub dataset name
        return f"datasets:{name}" + (f"[{split}]" if split else "")
    name = getattr(getattr(source, "info", None), "dataset_name", None) or "in-memory"
    return f"datasets:{name}"
