"""Load a model and its tokenizer for evaluation: from a local export directory or a Hub repo, at a revision.

A local suite export (spectra_hf/checkpoints/exports.py) keeps its intermediate checkpoints in
`checkpoints/step<N>/`, which are its revisions `step<N>` (the branches they are published as). A Hub repo is
downloaded with huggingface_hub from `endpoint` (default: `HF_ENDPOINT`, i.e. huggingface.co or a local Hub) and
loaded from the snapshot.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from spectra_hf.checkpoints.exports import checkpoint_dir, checkpoint_steps
from spectra_hf.checkpoints.io import read_config
from spectra_hf.errors import CheckpointError, ConfigError, HubError

_REPO_ID_RE = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_MAIN_REVISIONS = (None, "main")
# What from_pretrained needs; skips e.g. GGUF files and checkpoint folders a repo may also hold.
_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.txt", "*.model", "*.jinja"]


def resolve_local(path: Path, revision: str | None) -> Path:
    """The directory of `revision` of a local export: the export itself for main, else `checkpoints/step<N>`."""
    if revision in _MAIN_REVISIONS:
        return path
    steps = checkpoint_steps(path.parent, path.name)
    match = re.fullmatch(r"step(\d+)", revision)
    if match is None or int(match.group(1)) not in steps:
        available = ", ".join(["main", *(f"step{s}" for s in steps)])
        raise ConfigError(f"revision {revision!r} does not exist in {path}: available revisions are {available}")
    return checkpoint_dir(path.parent, path.name, int(match.group(1)))


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Snapshot of `repo_id` at `revision` from the Hub at `endpoint`; one clear error per way it can fail."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = (endpoint or constants.ENDPOINT).rstrip("/")
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                endpoint=endpoint,
                token=token,
                cache_dir=cache_dir,
                allow_patterns=_ALLOW_PATTERNS,
            )
        )
    except RevisionNotFoundError as error:
        raise HubError(
            f"revision {revision!r} does not exist in {repo_id} on {where}: list its branches with "
            f"huggingface_hub.list_repo_refs({repo_id!r})"
        ) from error
    except GatedRepoError as error:
        raise HubError(f"{repo_id} on {where} is gated: accept its terms and log in (hf auth login)") from error
    except RepositoryNotFoundError as error:
        raise HubError(
            f"model {repo_id!r} does not exist on {where} (or needs a token): check the name, or pass a local "
            "directory or --endpoint"
        ) from error
    except (LocalEntryNotFoundError, ConnectionError) as error:
        raise HubError(
            f"cannot download {repo_id} from {where} and it is not in the local cache: check the network or "
            "--endpoint, or pass a local directory"
        ) from error


def load_pretrained(
    model: str | Path,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of a local directory or a Hub repo id, at `revision`.

    Spectra model types (`trilm`, `floatlm`) load through the Auto classes (registered by `import spectra_hf`),
    as do Llama checkpoints of the original release; packed GPTQ QuantLMs through
    `spectra_hf.quantization.gptq.load_quantlm`.
    `dtype` defaults to float32 (fp16 matmuls are slow and inexact on CPU).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spectra_hf  # noqa: F401  (registers the trilm / floatlm model types)

    path = Path(model).expanduser()
    if path.is_dir():
        directory = resolve_local(path, revision)
    elif path.exists() or not _REPO_ID_RE.match(str(model)):
        raise CheckpointError(
            f"model path {model} does not exist (or is not a directory): pass an export directory or a Hub repo id "
            "like SpectraSuite/TriLM_99M_Unpacked"
        )
    else:
        directory = download(str(model), revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} has no config.json: it is not a transformers model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load the tokenizer of {model} from {directory}: {error}") from error
    if _is_gptq(directory):
        # any width 2..8 (transformers' GPTQConfig alone refuses 5-7 bits)
        from spectra_hf.quantization.gptq import load_quantlm

        return load_quantlm(directory, dtype=dtype), tokenizer
    loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    return loaded.eval(), tokenizer


def _is_gptq(directory: Path) -> bool:
    from spectra_hf.quantization.hf_quantizer import SPECTRA_GPTQ_METHOD

    method = (read_config(directory).get("quantization_config") or {}).get("quant_method")
    return method in ("gptq", SPECTRA_GPTQ_METHOD)
