"""Shared fixtures: tiny models, an offline corpus and a BPE tokenizer trained on it (no network anywhere)."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Hub traffic in tests goes to the project's local Hub (spectra_hf.hub.localhub), never to huggingface.co.
# huggingface_hub reads these once, when it is first imported (spectra_hf imports transformers, which imports it),
# so they are set before the imports below; the `local_hub` fixture serves on this port.
LOCAL_HUB_PORT = _free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{LOCAL_HUB_PORT}"
os.environ["HF_HUB_DISABLE_XET"] = "1"  # hf_xet is installed; the local Hub speaks the plain LFS protocol
# Downloads, the remote-code module cache and tokens stay inside this test run, never in the user's ~/.cache.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="spectra-hf-tests-hf-home-")

from spectra_hf.testing.corpus import local_corpus, train_tokenizer, write_corpus  # noqa: E402 - after the HF_* env


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    return local_corpus()


@pytest.fixture(scope="session")
def tokenizer(corpus_texts):
    """Byte-level BPE, vocab 512, `<|endoftext|>` = 0 = bos = eos."""
    return train_tokenizer(corpus_texts, vocab_size=512)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, tokenizer):
    """The `tokenizer` fixture saved with save_pretrained (for recipes and CLIs that take a path)."""
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def corpus_files(tmp_path_factory, corpus_texts):
    """(train.txt, eval.txt) written from the local corpus."""
    return write_corpus(corpus_texts, tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def demo_quick(tmp_path_factory):
    """`spectra-hf demo --quick`, run once per session as a user runs it (a fresh process, default verbosity): the
    CompletedProcess, with `.workdir`. tests/test_demo.py checks its results, tests/test_quiet.py its stderr."""
    import subprocess
    import sys
    from pathlib import Path

    workdir = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "spectra-hf"), "demo", "--workdir", str(workdir), "--quick"],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert done.returncode == 0, f"demo exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    done.workdir = workdir  # type: ignore[attr-defined]
    return done


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory):
    """The local Hub HF_ENDPOINT points at: plain `HfApi()`, `hf_hub_download` and `from_pretrained` reach it.

    Shared by the whole session: use repo ids of your own, and run fault injection on a LocalHub of your own.
    """
    from huggingface_hub import constants

    from spectra_hf.hub.localhub import LocalHub

    assert os.environ["HF_ENDPOINT"] == constants.ENDPOINT, (
        "huggingface_hub was imported before conftest set HF_ENDPOINT"
    )
    with LocalHub(tmp_path_factory.mktemp("local-hub"), port=LOCAL_HUB_PORT) as hub:
        yield hub


@pytest.fixture
def hub(tmp_path):
    """A LocalHub of this test's own (fault injection, limits, tokens): reach it with `api` or `endpoint=hub.url`."""
    from spectra_hf.hub.localhub import LocalHub

    with LocalHub(tmp_path / "hub") as hub:
        yield hub


@pytest.fixture
def api(hub):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.url, token=False)
