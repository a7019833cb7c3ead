"""The YAML metadata block at the top of a README.md (model or dataset card), as the Hub validates and serves it."""

from __future__ import annotations

import re

import yaml

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.DOTALL)


def front_matter(text: str) -> dict | None:
    """The card's metadata, None when it has no `---` block; ValueError when the block is not a YAML mapping."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        raise ValueError(f"Invalid YAML in the README.md metadata block: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("The README.md metadata block must be a YAML mapping (key: value lines).")
    return data
