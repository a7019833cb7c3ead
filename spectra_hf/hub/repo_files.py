"""The files a Hub repo branch is made of, shared by `spectra-hf publish` (hub/plan.py) and `spectra-hf release`.

A branch is a list of `PlanFile`s: each read from disk (`file_on_disk`) or generated (`generated_file`: the model card,
revisions.json). `revisions_json` writes the one schema of `revisions.json` on `main`:

    {"repo_id": "<org>/<name>",
     "main": {"step": <int or null>, "tokens_seen": <int or null>, "release": <"repo@revision" or null>},
     "revisions": [{"branch": "step<N>", "step": N, "tokens_seen": T}, ...]}   (ascending step)

`main.release` names the original SpectraSuite revision `main` was converted from (`spectra-hf release`); null for
a suite trained and exported here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spectra_hf.cards import REVISIONS_FILE, Revision

CARD_FILE = "README.md"
# A repo with either file ships a tokenizer; its card then shows loading one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class PlanFile:
    """One file of a branch: read from `local_path`, or generated `content` (cards, revisions.json).

    An `estimated` file has neither: it is what a conversion not run yet would write (plans made with
    `convert=False`, as `publish --dry-run` makes them), and `size` is an estimate. Such a plan cannot be published.
    """

    path_in_repo: str
    size: int
    local_path: Path | None = None
    content: bytes | None = None
    estimated: bool = False


def file_on_disk(path_in_repo: str, local_path: Path) -> PlanFile:
    """The file at `local_path`, published as `path_in_repo` (sized now)."""
    return PlanFile(path_in_repo=path_in_repo, size=local_path.stat().st_size, local_path=local_path)


def generated_file(path_in_repo: str, text: str) -> PlanFile:
    """A file whose content is `text` (UTF-8), published as `path_in_repo`."""
    content = text.encode("utf-8")
    return PlanFile(path_in_repo=path_in_repo, size=len(content), content=content)


def has_tokenizer(paths_in_repo: Iterable[str]) -> bool:
    """Whether a branch with these files ships a tokenizer."""
    return any(path in TOKENIZER_FILES for path in paths_in_repo)


def revisions_json(
    repo_id: str,
    *,
    main_step: int | None,
    main_tokens_seen: int | None,
    revisions: Sequence[Revision],
    release: str | None = None,
) -> PlanFile:
    """`revisions.json` of `main` (schema in the module docstring)."""
    data = {
        "repo_id": repo_id,
        "main": {"step": main_step, "tokens_seen": main_tokens_seen, "release": release},
        "revisions": [r.as_dict() for r in revisions],
    }
    return generated_file(REVISIONS_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")


def main_step_of(text: str) -> int | None:
    """The optimizer step `main` holds, from the text of a `revisions.json` (`revisions_json`'s schema); None when
    the file does not record one (a hand-made file, an older schema, not JSON)."""
    try:
        step = json.loads(text)["main"]["step"]
    except (ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def human_size(size: int) -> str:
    """`1_500_000_000` bytes -> "1.50 GB" (decimal units, as the Hub shows sizes)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


__all__ = [
    "CARD_FILE",
    "REVISIONS_FILE",
    "TOKENIZER_FILES",
    "PlanFile",
    "file_on_disk",
    "generated_file",
    "has_tokenizer",
    "human_size",
    "main_step_of",
    "revisions_json",
]
