"""The tools a Hugging Face user reaches for, driven for real on a latent TriLM, a packed TriLM and a FloatLM.

Each model is a tiny one saved the way exports are (config, weights, tokenizer, remote code) and loaded back with
the Auto classes; nothing here imitates a library.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GPTQConfig

import spectra_hf  # noqa: F401  (registers trilm / floatlm with the Auto classes)
from spectra_hf.modeling.configuration_floatlm import MIN_TRANSFORMERS_VERSION, require_transformers_version
from spectra_hf.suite import config_for

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("trilm-latent", "trilm-packed", "floatlm")


def _build(kind: str, directory: Path, tokenizer) -> Path:
    name = "FloatLM_99M" if kind == "floatlm" else "TriLM_99M"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_for(name, tiny=True, vocab_size=len(tokenizer)))
    model.save_pretrained(directory, **({"weight_format": "packed"} if kind == "trilm-packed" else {}))
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compat")
    return {kind: _build(kind, root / kind, tokenizer) for kind in KINDS}


@pytest.mark.parametrize(
    "quantization_config",
    [BitsAndBytesConfig(load_in_8bit=True), BitsAndBytesConfig(load_in_4bit=True), GPTQConfig(bits=4)],
    ids=["bnb-8bit", "bnb-4bit", "gptq"],
)
@pytest.mark.parametrize("kind", ["trilm-latent", "trilm-packed"])
def test_trilm_refuses_a_quantization_config_instead_of_quantizing_nothing(model_dirs, kind, quantization_config):
    with pytest.raises(ValueError, match=r"TriLM does not take quantization_config .*1\.6 bits per weight"):
        AutoModelForCausalLM.from_pretrained(model_dirs[kind], quantization_config=quantization_config)


@pytest.mark.slow
def test_remote_code_on_an_old_transformers_names_the_version_it_needs(model_dirs, tmp_path):
    """A fresh interpreter without spectra_hf, whose transformers says it is 4.57.3, loads the saved TriLM with
    trust_remote_code: the remote code stops at its first line with the required version."""
    script = (
        "import transformers\n"
        "transformers.__version__ = '4.57.3'\n"
        "from transformers import AutoModelForCausalLM\n"
        f"AutoModelForCausalLM.from_pretrained({str(model_dirs['trilm-packed'])!r}, trust_remote_code=True)\n"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert f"needs transformers>={MIN_TRANSFORMERS_VERSION}, but transformers 4.57.3 is installed" in run.stderr
    assert "spectra_hf" not in run.stderr


def test_the_version_check_accepts_what_the_package_requires():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = next(d for d in dependencies if d.startswith("transformers"))
    assert f">={MIN_TRANSFORMERS_VERSION}," in pinned  # one minimum, stated in both places
    for version in (MIN_TRANSFORMERS_VERSION, "5.23.0.dev0", "5.25.0", "6.0.0rc1"):
        require_transformers_version(version)
    for version in ("4.57.3", "5.0.0", "5.22.2"):
        with pytest.raises(ImportError, match=rf'pip install -U "transformers>={MIN_TRANSFORMERS_VERSION}"'):
            require_transformers_version(version)
