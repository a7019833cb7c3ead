"""Perplexity and bits-per-byte of a causal LM on text, with a sliding window over long documents.

Every document is scored on its own: `[bos] + tokens(document)`, so its first token is predicted too (as
lm-evaluation-harness's rolling log-likelihood does). A document longer than `max_length` tokens is covered by
windows that start every `stride` tokens (Hugging Face's "perplexity of fixed-length models" recipe); each token is
scored once, in the first window that holds it as a new target, with the window's earlier tokens as context.

    perplexity     = exp(total NLL / scored tokens)              NLL in nats
    bits_per_byte  = total NLL / (ln 2 * UTF-8 bytes of the documents)

Bits per byte does not depend on the tokenizer, so it compares models with different vocabularies.
The same computation ships as an `evaluate` module: `load_perplexity_metric()`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spectra_hf.errors import ConfigError, DataError

PERPLEXITY_METRIC_PATH = Path(__file__).with_name("perplexity_metric.py")


@dataclass(frozen=True)
class Window:
    """One model call: `input_ids` (a slice of `[bos] + document`), whose last `num_targets` tokens are scored."""

    input_ids: list[int]
    num_targets: int


def sliding_windows(input_ids: Sequence[int], *, max_length: int, stride: int) -> list[Window]:
    """Cover `input_ids` (starting with bos, which is never a target) with windows of at most `max_length` tokens.

    Windows start at 0, stride, 2 * stride, ... until one reaches the end; every token but the first is a
    target of exactly one window, and has at least one token of context in it (hence stride < max_length).
    """
    if not 1 <= stride < max_length:
        raise ConfigError(f"stride {stride} must be at least 1 and below max_length ({max_length})")
    windows: list[Window] = []
    previous_end = 1  # position 0 (bos) is context only
    for begin in range(0, len(input_ids), stride):
        end = min(begin + max_length, len(input_ids))
        if end > previous_end:
            windows.append(Window(list(input_ids[begin:end]), end - previous_end))
        previous_end = end
        if end == len(input_ids):
            break
    return windows


def _start_token_id(tokenizer: Any) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise ConfigError(
        "the tokenizer has neither a bos nor an eos token to start documents with; set tokenizer.bos_token"
    )


def _default_max_length(model: torch.nn.Module, tokenizer: Any) -> int:
    candidates = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [limit for limit in candidates if isinstance(limit, int) and 0 < limit < 1_000_000]
    if not limits:
        raise ConfigError("cannot tell the model's context length: pass max_length")
    return min(limits)


@torch.inference_mode()
def _window_nll(model: torch.nn.Module, batch: list[Window], device: torch.device) -> float:
    """Summed NLL (nats) of the targets of a batch of windows, right-padded into one [batch, longest] call."""
    longest = max(len(w.input_ids) for w in batch)
    input_ids = torch.zeros(len(batch), longest, dtype=torch.long)
    attention_mask = torch.zeros(len(batch), longest, dtype=torch.long)
    for row, window in enumerate(batch):
        input_ids[row, : len(window.input_ids)] = torch.tensor(window.input_ids)
        attention_mask[row, : len(window.input_ids)] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits  # [B, T, V]
    total = 0.0
    for row, window in enumerate(batch):
        end = len(window.input_ids)
        start = end - window.num_targets
        targets = input_ids[row, start:end].to(device)
        # logits at position p predict the token at p + 1
        total += F.cross_entropy(logits[row, start - 1 : end - 1].double(), targets, reduction="sum").item()
    return total


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Iterable[str],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 1,
    show_progress: bool = True,
) -> dict[str, float | int]:
    """Perplexity and bits per byte of `model` on `texts` (one document each).

    Args:
        model: a causal LM: `input_ids` [batch, seq] (+ `attention_mask`) -> `logits` [batch, seq, vocab].
        tokenizer: its tokenizer; documents start with its bos token (or eos when there is no bos).
        texts: the documents; empty ones are skipped.
        max_length: tokens per model call (default: the model's context length).
        stride: tokens between window starts (default: `max_length - 1`: consecutive windows share one token,
            lm-evaluation-harness's rolling windows; a smaller stride gives each token more context at more compute).
        batch_size: windows per model call.

    Returns:
        `perplexity`, `bits_per_byte`, `nll_per_token` (nats), `num_tokens` (scored), `num_bytes`, `num_documents`.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    max_length = max_length or _default_max_length(model, tokenizer)
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 (one context and one target token), got {max_length}")
    stride = stride or max_length - 1
    start_id = _start_token_id(tokenizer)

    windows: list[Window] = []
    num_bytes = num_documents = 0
    for text in texts:
        token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not token_ids:
            continue
        windows.extend(sliding_windows([start_id, *token_ids], max_length=max_length, stride=stride))
        num_bytes += len(text.encode("utf-8"))
        num_documents += 1
    if not windows:
        raise DataError("no text to evaluate: every document is empty")
    windows.sort(key=lambda w: len(w.input_ids), reverse=True)  # similar lengths share a batch: less padding

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll = 0.0
    try:
        batches = range(0, len(windows), batch_size)
        for first in tqdm(batches, desc="perplexity", unit="batch", disable=not show_progress):
            total_nll += _window_nll(model, windows[first : first + batch_size], device)
    finally:
        model.train(was_training)

    num_tokens = sum(w.num_targets for w in windows)
    return {
        "perplexity": math.exp(total_nll / num_tokens),
        "bits_per_byte": total_nll / (math.log(2) * num_bytes),
        "nll_per_token": total_nll / num_tokens,
        "num_tokens": num_tokens,
        "num_bytes": num_bytes,
        "num_documents": num_documents,
    }


def load_perplexity_metric(**kwargs: Any):
    """This module's perplexity as an `evaluate` metric (offline; takes model and tokenizer objects).

    >>> metric = load_perplexity_metric()
    >>> metric.compute(predictions=texts, model=model, tokenizer=tokenizer, stride=512)  # doctest: +SKIP
    """
    import evaluate

    return evaluate.load(str(PERPLEXITY_METRIC_PATH), **kwargs)


def load_texts(
    source: str,
    *,
    text_column: str = "text",
    split: str | None = None,
    config: str | None = None,
    max_documents: int | None = None,
) -> list[str]:
    """Documents to score: `spectra_hf.texts.load_documents` (the reader training and calibration use too).

    `source` is a `.txt` file (one document per non-empty line, as `spectra_hf.testing.corpus.write_corpus` writes), a
    `.json` / `.jsonl` / `.csv` / `.parquet` file, a directory written by `Dataset.save_to_disk`, or a dataset
    name that `datasets.load_dataset` knows (Hub ids need network or the local cache; several splits need `split`).
    """
    from spectra_hf.texts import load_documents

    return load_documents(source, text_column=text_column, split=split, config=config, max_documents=max_documents)
