"""What the Hub derives from a repo's files for `model_info` and `list_models`: the card's metadata, pipeline tag,
library, tags, a digest of config.json and parameter counts from the safetensors headers.

transformers' `pipeline(model="org/name")` reads `pipeline_tag` and `library_name` to pick its task; `hf models ls`
and `list_models(author=, search=, filter=)` filter on the id and on `tags`.
"""

from __future__ import annotations

import json
import struct
from functools import lru_cache
from pathlib import Path

from .blobs import BlobStore
from .cardmeta import front_matter
from .store import Commit

# config.json keys the Hub repeats in model_info's `config`.
_CONFIG_KEYS = ("architectures", "model_type", "auto_map", "quantization_config", "pretraining_model_parallel")
# __metadata__ keys (string values) that give a checkpoint's real parameter count, which packed headers undercount.
_TOTAL_KEYS = ("total", "total_parameters")
_MAX_HEADER = 100 * 1024 * 1024


@lru_cache(maxsize=4096)
def _safetensors_header(path: Path, sha256: str) -> dict | None:
    """The JSON header of a safetensors file (cached per blob); None when it is not one."""
    del sha256  # the cache key: a blob's content never changes under its name
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > _MAX_HEADER:
                return None
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def safetensors_info(blobs: BlobStore, commit: Commit) -> dict | None:
    """{"parameters": {dtype: count}, "total": n} over the commit's *.safetensors files, as the Hub reports it.

    A `total` (or `total_parameters`) in a file's `__metadata__` wins over the element count of its header: a packed
    TriLM stores five ternary weights per byte, so its header counts a fifth of them.
    """
    parameters: dict[str, int] = {}
    total = 0
    found = False
    for path, entry in sorted(commit.tree.items()):
        if not path.endswith(".safetensors"):
            continue
        header = _safetensors_header(blobs.path(entry.sha256), entry.sha256)
        if header is None:
            continue
        found = True
        counted = 0
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, dict):
                continue
            count = 1
            for dim in tensor.get("shape") or []:
                count *= int(dim)
            dtype = str(tensor.get("dtype"))
            parameters[dtype] = parameters.get(dtype, 0) + count
            counted += count
        raw_metadata = header.get("__metadata__")
        metadata = raw_metadata if isinstance(raw_metadata, dict) else {}
        declared = next((metadata[key] for key in _TOTAL_KEYS if str(metadata.get(key, "")).isdigit()), None)
        total += int(declared) if declared is not None else counted
    return {"parameters": parameters, "total": total} if found else None


def _read_json_file(blobs: BlobStore, commit: Commit, path: str) -> dict | None:
    entry = commit.tree.get(path)
    if entry is None or not blobs.has(entry.sha256):
        return None
    try:
        data = json.loads(blobs.path(entry.sha256).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def card_data(blobs: BlobStore, commit: Commit) -> dict | None:
    """The README.md metadata block, None without one (or with a broken one, which the Hub serves without it)."""
    readme = commit.tree.get("README.md")
    if readme is None or not blobs.has(readme.sha256):
        return None
    try:
        return front_matter(blobs.path(readme.sha256).read_text(encoding="utf-8", errors="replace"))
    except ValueError:
        return None


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def model_metadata(blobs: BlobStore, commit: Commit) -> dict:
    """cardData, pipeline_tag, library_name, tags, config and safetensors of a model repo at `commit` (keys left
    out when the repo has nothing to derive them from)."""
    card = card_data(blobs, commit)
    config = _read_json_file(blobs, commit, "config.json")
    info: dict = {}
    if card is not None:
        info["cardData"] = card
    card = card or {}
    library = card.get("library_name") or ("transformers" if config is not None else None)
    pipeline_tag = card.get("pipeline_tag")
    architectures = _as_list((config or {}).get("architectures"))
    if pipeline_tag is None and library == "transformers" and any(a.endswith("ForCausalLM") for a in architectures):
        pipeline_tag = "text-generation"
    tags = _as_list(card.get("tags"))
    if library:
        tags.append(str(library))
    if any(path.endswith(".safetensors") for path in commit.tree):
        tags.append("safetensors")
    if any(path.endswith(".gguf") for path in commit.tree):
        tags.append("gguf")
    if config is not None and config.get("model_type"):
        tags.append(str(config["model_type"]))
    if config is not None and config.get("auto_map"):
        tags.append("custom_code")
    if pipeline_tag:
        tags.append(str(pipeline_tag))
    tags += [f"license:{value}" for value in _as_list(card.get("license"))]
    tags += [f"base_model:{value}" for value in _as_list(card.get("base_model"))]
    tags += [f"dataset:{value}" for value in _as_list(card.get("datasets"))]
    tags += [f"arxiv:{value}" for value in _as_list(card.get("arxiv"))]
    info["tags"] = list(dict.fromkeys(tags))
    if pipeline_tag:
        info["pipeline_tag"] = pipeline_tag
    if library:
        info["library_name"] = library
    if config is not None:
        info["config"] = {key: config[key] for key in _CONFIG_KEYS if key in config}
    safetensors = safetensors_info(blobs, commit)
    if safetensors is not None:
        info["safetensors"] = safetensors
    return info
