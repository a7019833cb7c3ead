"""Calibration data for GPTQ: text from local files or a `datasets` dataset, cut into samples x length tokens.

The paper calibrated every QuantLM on 512 samples of 2048 tokens of SlimPajama. Here the text is whatever the
caller provides; it is tokenized document by document (an end-of-text token after each), concatenated, cut into
non-overlapping windows of `length` tokens, and `samples` windows are drawn without replacement with a seeded
generator, so the same text, tokenizer and seed always give the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spectra_hf.errors import SpectraError

# What `load_calibration_texts` accepts: a text file or `save_to_disk` directory, several files, a `datasets`
# dataset name (loaded with `datasets.load_dataset`), or an in-memory `datasets.Dataset` / list of documents.
CalibrationSource = Any


@dataclass(frozen=True)
class CalibrationTexts:
    """Documents to calibrate on, and a one-line description of where they came from (recorded in exports)."""

    documents: list[str]
    source: str


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def _dataset_column(dataset: Any, text_column: str, source: str) -> list[str]:
    if text_column not in dataset.column_names:
        raise SpectraError(
            f"calibration dataset {source} has no column {text_column!r} (columns: {', '.join(dataset.column_names)}); "
            "pass the name of its text column (--text-column)"
        )
    return [text for text in dataset[text_column] if text and text.strip()]


def load_calibration_texts(
    source: CalibrationSource, *, text_column: str = "text", split: str = "train"
) -> CalibrationTexts:
    """Read calibration documents.

    Args:
        source: one of
            - a path, or a list of `Path`s, to text files: every non-empty line is one document;
            - a directory written by `datasets.Dataset.save_to_disk` (a `DatasetDict` uses `split`);
            - a `datasets.Dataset` object, or a list of strings (the documents themselves);
            - any other string: a dataset name for `datasets.load_dataset(source, split=split)` (a Hub name works
              only where it is cached, or online).
        text_column: the dataset column holding the text.
        split: the split of a dataset name or a saved `DatasetDict`.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if _is_saved_dataset(path):
            return _load_saved_dataset(path, text_column=text_column, split=split)
        if path.is_file():
            return _read_text_files([path])
        if path.exists() or isinstance(source, Path) or path.suffix:
            raise SpectraError(
                f"calibration path {path} is not a text file or a saved dataset: pass text files (one document per "
                "line) or a directory written by Dataset.save_to_disk"
            )
        return _load_named_dataset(str(source), text_column=text_column, split=split)
    if isinstance(source, Sequence) and source and all(isinstance(s, Path) for s in source):
        missing = [str(p) for p in source if not p.is_file()]
        if missing:
            raise SpectraError(f"calibration text file(s) not found: {', '.join(missing)}")
        return _read_text_files(list(source))
    if isinstance(source, Sequence) and all(isinstance(s, str) for s in source):
        return CalibrationTexts([s for s in source if s.strip()], f"documents:{len(source)}")
    if hasattr(source, "column_names"):
        name = getattr(getattr(source, "info", None), "dataset_name", None) or "in-memory"
        return CalibrationTexts(_dataset_column(source, text_column, name), f"datasets:{name}")
    raise SpectraError(f"cannot read calibration text from {type(source).__name__}: pass text files or a dataset")


def _read_text_files(paths: list[Path]) -> CalibrationTexts:
    documents = [line.strip() for p in paths for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return CalibrationTexts(documents, "files:" + ",".join(str(p) for p in paths))


def _load_saved_dataset(path: Path, *, text_column: str, split: str) -> CalibrationTexts:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise SpectraError(f"saved dataset {path} has no split {split!r} (splits: {', '.join(loaded)}); pass --split")
        loaded = loaded[split]
    return CalibrationTexts(_dataset_column(loaded, text_column, str(path)), f"datasets:{path}")


def _load_named_dataset(name: str, *, text_column: str, split: str) -> CalibrationTexts:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # datasets raises many types (connection, not found, config) for one cause
        raise SpectraError(
            f"could not load calibration dataset {name!r} split {split!r} ({type(error).__name__}: {error}); "
            "offline, pass local text files or a directory written by Dataset.save_to_disk"
        ) from error
    return CalibrationTexts(_dataset_column(dataset, text_column, name), f"datasets:{name}[{split}]")


def calibration_samples(
    tokenizer: Any, documents: Sequence[str], *, samples: int, length: int, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Tokenize `documents` and draw `samples` non-overlapping windows of `length` tokens.

    Returns:
        `samples` dicts with `input_ids` and `attention_mask`, each a LongTensor of shape [1, length] (the 2-D
        form optimum's GPTQQuantizer expects).

    Raises:
        SpectraError: if the documents hold fewer than `samples * length` tokens.
    """
    if samples < 1 or length < 1:
        raise SpectraError(f"calibration needs at least one sample of one token, got {samples} x {length}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise SpectraError("the tokenizer has no eos token; GPTQ calibration separates documents with it")
    encoded = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    stream = torch.tensor([token for ids in encoded for token in (*ids, eos)], dtype=torch.long)
    windows = stream.numel() // length
    if windows < samples:
        raise SpectraError(
            f"calibration text has {stream.numel()} tokens, {windows} windows of {length}; {samples} samples x "
            f"{length} tokens need {samples * length}: give more text, or fewer/shorter samples "
            "(--calibration-samples / --calibration-length)"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randperm(windows, generator=generator)[:samples] * length
    return [
        {
            "input_ids": stream[start : start + length].unsqueeze(0),
            "attention_mask": torch.ones(1, length, dtype=torch.long),
        }
        for start in starts.tolist()
    ]
