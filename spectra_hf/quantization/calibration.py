"""Calibration data for GPTQ: text from local files or a `datasets` dataset, cut into samples x length tokens.

The paper calibrated every QuantLM on 512 samples of 2048 tokens of SlimPajama. Here the text is whatever the
caller provides; it is tokenized document by document (an end-of-text token after each), concatenated, cut into
non-overlapping windows of `length` tokens, and `samples` windows are drawn without replacement with a seeded
generator, so the same text, tokenizer and seed always give the same samples.

Less text than `samples` windows (a user's own small file) scales down: every window the text holds is used, with a
warning that says how many and how to change it; text shorter than one window is refused with what to lower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import logging

from spectra_hf.errors import ConfigError, DataError

logger = logging.get_logger(__name__)

# What `load_calibration_texts` accepts: any `spectra_hf.texts` source (text files, a `save_to_disk` directory, a
# `datasets` name or object), or a list of strings (the documents themselves).
CalibrationSource = Any


@dataclass(frozen=True)
class CalibrationTexts:
    """Documents to calibrate on, and a one-line description of where they came from (recorded in exports)."""

    documents: list[str]
    source: str


def load_calibration_texts(
    source: CalibrationSource, *, text_column: str = "text", split: str | None = None
) -> CalibrationTexts:
    """Read calibration documents with `spectra_hf.texts.load_documents` (the reader of training and evaluation).

    Args:
        source: text files (a path or a list of `Path`s; `.txt` gives one document per line, `.jsonl` one per
            record), a directory written by `Dataset.save_to_disk`, a dataset name for `datasets.load_dataset`,
            a `datasets.Dataset`, or a list of strings (the documents themselves).
        text_column: the dataset column holding the text.
        split: the split of a dataset name or a saved `DatasetDict` (None: its only split).
    """
    from spectra_hf.texts import describe_source, load_documents

    is_document_list = isinstance(source, Sequence) and not isinstance(source, str) and bool(source)
    if is_document_list and all(isinstance(item, str) for item in source):
        documents = [text for text in source if text and text.strip()]
        return CalibrationTexts(documents, f"documents:{len(source)}")
    documents = load_documents(source, text_column=text_column, split=split)
    return CalibrationTexts(documents, describe_source(source, split=split))


def calibration_samples(
    tokenizer: Any, documents: Sequence[str], *, samples: int, length: int, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Tokenize `documents` and draw `samples` non-overlapping windows of `length` tokens.

    Returns:
        min(`samples`, windows the text holds) dicts with `input_ids` and `attention_mask`, each a LongTensor of
        shape [1, length] (the 2-D form optimum's GPTQQuantizer expects). Fewer than `samples` is logged as a warning.

    Raises:
        DataError: if the documents hold fewer than `length` tokens (not one sample).
    """
    if samples < 1 or length < 1:
        raise ConfigError(f"calibration needs at least one sample of one token, got {samples} x {length}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no eos token; GPTQ calibration separates documents with it")
    encoded = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    stream = torch.tensor([token for ids in encoded for token in (*ids, eos)], dtype=torch.long)  # [tokens]
    windows = stream.numel() // length
    if windows < 1:
        raise DataError(
            f"calibration text has {stream.numel()} tokens, fewer than one sample of {length}: give more text, or "
            "shorter samples (--calibration-length)"
        )
    if windows < samples:
        logger.warning(
            f"calibration text has {stream.numel()} tokens: using {windows} samples of {length} tokens instead of "
            f"{samples} (the paper used 512 x 2048); give more text for the full calibration, or pass "
            f"--calibration-samples {windows} to ask for this"
        )
        samples = windows
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randperm(windows, generator=generator)[:samples] * length
    return [
        {
            "input_ids": stream[start : start + length].unsqueeze(0),
            "attention_mask": torch.ones(1, length, dtype=torch.long),
        }
        for start in starts.tolist()
    ]
