"""Offline text and tokenizers for tests and the demo: no Hub download, no network.

`local_corpus()` collects English prose that every Python installation carries (the docstrings of the standard
library), deterministically. `train_tokenizer()` trains a byte-level BPE like GPT-NeoX's (id 0 is
`<|endoftext|>`, which is bos = eos = 0 as in the Spectra models) in seconds.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"

# Modules with long, well-written docstrings; present in every CPython 3.10+.
_STDLIB_MODULES = (
    "argparse.py", "collections/__init__.py", "dataclasses.py", "datetime.py", "decimal.py", "difflib.py",
    "email/message.py", "enum.py", "fractions.py", "functools.py", "heapq.py", "inspect.py", "ipaddress.py",
    "logging/__init__.py", "os.py", "pathlib.py", "pickle.py", "random.py", "shutil.py", "statistics.py",
    "string.py", "subprocess.py", "tarfile.py", "textwrap.py", "threading.py", "typing.py", "unittest/case.py",
    "urllib/parse.py", "uuid.py", "zipfile.py", "json/__init__.py", "calendar.py", "contextlib.py",
    "doctest.py", "gettext.py", "imaplib.py", "locale.py", "mailbox.py", "optparse.py", "pydoc.py",
)


def _docstrings(path: Path) -> Iterable[str]:
    tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 200:
                yield " ".join(doc.split())


def local_corpus(max_documents: int | None = None) -> list[str]:
    """Documents of English prose from the standard library's docstrings (same list on every machine)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    documents: list[str] = []
    for relative in _STDLIB_MODULES:
        path = stdlib / relative
        if path.exists():
            documents.extend(_docstrings(path))
    documents.sort(key=lambda doc: hashlib.sha1(doc.encode()).hexdigest())  # shuffled, but deterministic
    return documents[:max_documents] if max_documents else documents


def write_corpus(documents: list[str], out_dir: str | Path, *, eval_fraction: float = 0.1) -> tuple[Path, Path]:
    """Write `train.txt` and `eval.txt` (one document per line) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cut = max(1, int(len(documents) * (1 - eval_fraction)))
    train, held_out = out / "train.txt", out / "eval.txt"
    train.write_text("\n".join(documents[:cut]) + "\n", encoding="utf-8")
    held_out.write_text("\n".join(documents[cut:]) + "\n", encoding="utf-8")
    return train, held_out


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer in the GPT-NeoX style, with `<|endoftext|>` as id 0 (bos = eos = unk)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=2048,
    )
