"""Clear errors for missing or corrupt local checkpoints, before transformers' lower-level messages."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError, safe_open


def check_local_checkpoint(path: str | os.PathLike) -> None:
    """Raise OSError naming the problem and the fix if `path` is a local checkpoint that cannot load.

    Hub repo ids ("org/name") pass through untouched; a path that looks local (absolute, ./, ~) must exist, hold
    config.json, and every *.safetensors file must have a readable header covering the file.
    """
    text = os.fspath(path)
    looks_local = os.path.isabs(text) or text.startswith((".", "~")) or os.path.exists(text)
    if not looks_local:
        return
    directory = Path(text).expanduser()
    if not directory.is_dir():
        raise OSError(
            f"no checkpoint at {directory}: the directory does not exist; pass a directory written by "
            "save_pretrained, or a Hub repo id such as 'SpectraSuite/TriLM_99M_Unpacked'"
        )
    if not (directory / "config.json").is_file():
        raise OSError(f"{directory} is not a checkpoint: config.json is missing (save the model with save_pretrained)")
    for weights in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(weights, framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            raise OSError(
                f"corrupt checkpoint file {weights} ({error}); the download or save was interrupted: "
                "re-download or re-save the model"
            ) from error


class CheckedLoadingMixin:
    """Runs `check_local_checkpoint` before `PreTrainedModel.from_pretrained`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        check_local_checkpoint(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
