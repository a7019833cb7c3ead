"""Shared fixtures: tiny models, an offline corpus and a BPE tokenizer trained on it (no network anywhere)."""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from spectra_hf.corpus import local_corpus, train_tokenizer, write_corpus


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    return local_corpus()


@pytest.fixture(scope="session")
def tokenizer(corpus_texts):
    """Byte-level BPE, vocab 512, `<|endoftext|>` = 0 = bos = eos."""
    return train_tokenizer(corpus_texts, vocab_size=512)


@pytest.fixture(scope="session")
def corpus_files(tmp_path_factory, corpus_texts):
    """(train.txt, eval.txt) written from the local corpus."""
    return write_corpus(corpus_texts, tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
