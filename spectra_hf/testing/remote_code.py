"""Load checkpoints as a user without spectra-hf does: `AutoModelForCausalLM.from_pretrained` in a fresh interpreter
that cannot import spectra_hf (tests of the remote code exports carry)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from spectra_hf.errors import CheckpointError

# argv: ids.pt, then (source, trust_remote_code "1"/"0", logits.pt) triples. Prints "LOADED <module> <class>" for each
# loaded model, in order (among whatever the libraries print).
REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockSpectra(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "spectra_hf" or name.startswith("spectra_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, BlockSpectra())
    import torch
    from transformers import AutoModelForCausalLM

    ids = torch.load(sys.argv[1])
    for source, trust, out in zip(sys.argv[2::3], sys.argv[3::3], sys.argv[4::3]):
        model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=trust == "1").eval()
        assert "spectra_hf" not in sys.modules
        with torch.no_grad():
            torch.save(model(ids).logits, out)
        print("LOADED", type(model).__module__, type(model).__name__, flush=True)
    """
)


@dataclass(frozen=True)
class RemoteLoad:
    """One checkpoint loaded without spectra-hf: the model's class and its logits on the given ids."""

    module: str
    class_name: str
    logits: torch.Tensor  # [batch, seq, vocab]


@dataclass(frozen=True)
class RemoteRun:
    """The loads of one interpreter, in the order asked, and everything it wrote to stderr (warnings included)."""

    loads: list[RemoteLoad]
    stderr: str


def load_without_spectra_hf(
    sources: Sequence[str | Path],
    ids: torch.Tensor,
    *,
    work_dir: Path,
    trust_remote_code: bool | Sequence[bool] = True,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> RemoteRun:
    """Load each of `sources` (directories or Hub repo ids) with `AutoModelForCausalLM.from_pretrained(source,
    trust_remote_code=...)` in one fresh interpreter that cannot import spectra_hf, and run it on `ids` [batch, seq].

    Args:
        sources: what to load, in order.
        trust_remote_code: passed to every load, or one value per source.
        ids: token ids fed to every model.
        work_dir: holds the ids and logits files and is the interpreter's working directory.
        env: variables set on top of this process's environment (e.g. HF_MODULES_CACHE, HF_HUB_OFFLINE).
        timeout: seconds the interpreter may run.

    Raises:
        CheckpointError: the interpreter failed (its stderr's end is in the message).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.save(ids, work_dir / "ids.pt")
    outputs = [work_dir / f"logits-{i}.pt" for i in range(len(sources))]
    trusted = [trust_remote_code] * len(sources) if isinstance(trust_remote_code, bool) else list(trust_remote_code)
    argv = [str(work_dir / "ids.pt")]
    for source, trust, out in zip(sources, trusted, outputs, strict=True):
        argv += [str(source), "1" if trust else "0", str(out)]
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=work_dir,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise CheckpointError(f"loading {list(map(str, sources))} without spectra_hf failed:\n{result.stderr[-3000:]}")
    printed = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("LOADED ")]
    loads = []
    for (module, class_name), out in zip(printed, outputs, strict=True):
        loads.append(RemoteLoad(module=module, class_name=class_name, logits=torch.load(out)))
    return RemoteRun(loads=loads, stderr=result.stderr)


__all__ = ["REMOTE_CODE_SCRIPT", "RemoteLoad", "RemoteRun", "load_without_spectra_hf"]
