"""A scaled-down copy of the public SpectraSuite release, built with stock transformers and served by a local Hub
(not a test module; test_release.py and bench/bench_release.py use it).

What the real release holds, at test scale: `TriLM_<size>_Unpacked` (fp16 Llama, ternary g_s * T per scale shard,
`pretraining_model_parallel` in config.json; built by tests/trilm_release.py), `FloatLM_<size>` (fp16 Llama),
`QuantLM_<size>_<b>bit_Unpacked` (a FloatLM really GPTQ-quantized through optimum and dequantized back to fp16
by `spectra-hf quantize --format unpacked`), and `<TriLM|FloatLM>_<size>_Unpacked_ckpts` whose `main` holds only
`.gitattributes` and which has one branch `step<N>` per checkpoint. Names are the real ones, the "2.3B" spelling
included; architectures are tiny (the pipeline warns that they differ from the registry's).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import HfApi
from transformers import LlamaConfig, LlamaForCausalLM
from trilm_release import release_model

from spectra_hf.suite import config_kwargs

ORG = "SpectraSuite"
CKPTS = "_Unpacked_ckpts"
GITATTRIBUTES = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
# GPTQ group 128 needs input widths that are multiples of 128: QuantLMs at 3/4 bits use this width.
QUANT_WIDE = {"hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 4, "num_key_value_heads": 4}


@dataclass
class ReleaseSpec:
    """What to put in the synthetic release: `trilm` {repo size spelling: (MP, [checkpoint steps])}, `floatlm`
    {size: [steps]}, `quantlm` {(size spelling, bits)}. Step lists may be empty (no _ckpts repo)."""

    trilm: dict[str, tuple[int, list[int]]] = field(default_factory=dict)
    floatlm: dict[str, list[int]] = field(default_factory=dict)
    quantlm: list[tuple[str, int]] = field(default_factory=list)
    vocab_size: int = 512


def _save(model: LlamaForCausalLM, directory: Path, tokenizer) -> Path:
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def trilm_checkpoint(directory: Path, *, mp: int, seed: int, tokenizer, vocab_size: int = 512) -> Path:
    return _save(release_model(mp, seed=seed, vocab_size=vocab_size), directory, tokenizer)


def floatlm_checkpoint(directory: Path, *, seed: int, tokenizer, vocab_size: int = 512, **overrides) -> Path:
    kwargs = config_kwargs("FloatLM_99M", tiny=True, vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**kwargs)).to(torch.float16).eval()
    return _save(model, directory, tokenizer)


def quantlm_checkpoint(
    directory: Path, *, bits: int, seed: int, tokenizer, calibration: Path, vocab_size: int = 512
) -> Path:
    """A QuantLM `_Unpacked`: GPTQ through optimum on a tiny FloatLM, dequantized to fp16 (the export's own path)."""
    from spectra_hf.quantization.gptq import export_quantlms

    with tempfile.TemporaryDirectory() as scratch:
        overrides = QUANT_WIDE if bits in (3, 4) else {}
        floatlm = floatlm_checkpoint(
            Path(scratch) / "float", seed=seed, tokenizer=tokenizer, vocab_size=vocab_size, **overrides
        )
        (written,) = export_quantlms(
            floatlm,
            Path(scratch) / "suite",
            calibration=calibration,
            bits=[bits],
            format="unpacked",
            samples=4,
            length=64,
            size="tiny",
        )
        shutil.copytree(written, directory)
    (directory / "spectra_export.json").unlink()  # the public release carries no spectra-hf bookkeeping
    return directory


def upload(api: HfApi, repo_id: str, folder: Path, *, branch: str = "main") -> None:
    api.create_repo(repo_id, exist_ok=True)
    if branch != "main":
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=branch, commit_message=f"upload {branch}")


def build_release(
    api: HfApi, spec: ReleaseSpec, work: Path, *, tokenizer, calibration: Path | None = None, org: str = ORG
) -> dict[str, Path]:
    """Upload the release described by `spec` under `org`; returns {"repo@branch": local folder it came from}."""
    folders: dict[str, Path] = {}
    seed = 0

    def add(repo: str, folder: Path, branch: str = "main") -> None:
        upload(api, f"{org}/{repo}", folder, branch=branch)
        folders[f"{org}/{repo}@{branch}"] = folder

    for size, (mp, steps) in spec.trilm.items():
        seed += 1
        add(f"TriLM_{size}_Unpacked", trilm_checkpoint(work / f"trilm-{size}", mp=mp, seed=seed, tokenizer=tokenizer))
        if steps:
            _ckpts_repo(api, f"{org}/TriLM_{size}{CKPTS}")
        for step in steps:
            seed += 1
            folder = trilm_checkpoint(work / f"trilm-{size}-{step}", mp=mp, seed=seed, tokenizer=tokenizer)
            add(f"TriLM_{size}{CKPTS}", folder, f"step{step}")
    for size, steps in spec.floatlm.items():
        seed += 1
        add(f"FloatLM_{size}", floatlm_checkpoint(work / f"floatlm-{size}", seed=seed, tokenizer=tokenizer))
        if steps:
            _ckpts_repo(api, f"{org}/FloatLM_{size}{CKPTS}")
        for step in steps:
            seed += 1
            folder = floatlm_checkpoint(work / f"floatlm-{size}-{step}", seed=seed, tokenizer=tokenizer)
            add(f"FloatLM_{size}{CKPTS}", folder, f"step{step}")
    for size, bits in spec.quantlm:
        seed += 1
        if calibration is None:
            raise ValueError("QuantLMs need calibration text")
        folder = quantlm_checkpoint(
            work / f"quantlm-{size}-{bits}", bits=bits, seed=seed, tokenizer=tokenizer, calibration=calibration
        )
        add(f"QuantLM_{size}_{bits}bit_Unpacked", folder)
    return folders


def _ckpts_repo(api: HfApi, repo_id: str) -> None:
    """A checkpoint repo as released: `main` holds only .gitattributes."""
    api.create_repo(repo_id, exist_ok=True)
    api.upload_file(path_or_fileobj=GITATTRIBUTES.encode(), path_in_repo=".gitattributes", repo_id=repo_id)


def set_tensor(folder: Path, name: str, edit) -> None:
    """Rewrite one tensor of a checkpoint folder's model.safetensors with `edit(tensor) -> tensor`."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(path)
    state[name] = edit(state[name].clone())
    save_file(state, path, metadata={"format": "pt"})


def release_logits(folder: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of a release folder under stock transformers in float32: what the re-published model must match."""
    config = json.loads((folder / "config.json").read_text())
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert config["model_type"] == "llama"
    with torch.no_grad():
        return model(input_ids).logits


def steps_of(spec_steps: Sequence[int]) -> list[str]:
    return [f"step{s}" for s in spec_steps]
