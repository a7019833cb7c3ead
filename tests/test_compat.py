"""The tools a Hugging Face user reaches for, driven for real on a latent TriLM, a packed TriLM and a FloatLM.

The models come from real (tiny, 4-step) training runs: the latent TriLM is the Trainer's checkpoint, the packed
TriLM and the FloatLM are the release exports `spectra-hf train` writes into a suite directory (config, weights,
tokenizer, remote code). Nothing here imitates a library.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GPTQConfig
from transformers.utils import logging as transformers_logging

import spectra_hf  # noqa: F401  (registers trilm / floatlm with the Auto classes)
from spectra_hf.modeling.configuration_floatlm import MIN_TRANSFORMERS_VERSION, require_transformers_version
from spectra_hf.suite import config_for
from spectra_hf.training import train

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("trilm-latent", "trilm-packed", "floatlm")
PROMPTS = ["Return the value of", "The file is opened in binary mode and the"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer_dir, corpus_files) -> dict[str, Path]:
    """{kind: directory} of models as training writes them (4 optimizer steps each)."""
    root = tmp_path_factory.mktemp("compat")
    dirs = {}
    for model in ("TriLM_99M", "FloatLM_99M"):
        recipe = {
            "model": model,
            "tiny": True,
            "tokenizer": str(tokenizer_dir),
            "data_files": [str(corpus_files[0])],
            "block_size": 32,
            "per_device_train_batch_size": 2,
            "max_steps": 4,
            "save_steps": 4,
            "output_dir": str(root / f"run-{model}"),
            "suite_dir": str(root / "suite"),
            "disable_tqdm": True,
            "report_to": "none",
        }
        train(recipe)
        family = "trilm-packed" if model.startswith("TriLM") else "floatlm"
        dirs[family] = root / "suite" / model
    dirs["trilm-latent"] = root / "run-TriLM_99M" / "checkpoint-4"
    return dirs


def _load(directory: Path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs).eval()


@pytest.fixture(scope="module")
def built_dirs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """A latent and a packed TriLM saved with save_pretrained (no training: for the fast checks)."""
    root = tmp_path_factory.mktemp("built")
    model = AutoModelForCausalLM.from_config(config_for("TriLM_99M", tiny=True, vocab_size=len(tokenizer)))
    model.save_pretrained(root / "trilm-latent")
    model.save_pretrained(root / "trilm-packed", weight_format="packed")
    return {"trilm-latent": root / "trilm-latent", "trilm-packed": root / "trilm-packed"}


@pytest.mark.parametrize(
    "quantization_config",
    [BitsAndBytesConfig(load_in_8bit=True), BitsAndBytesConfig(load_in_4bit=True), GPTQConfig(bits=4)],
    ids=["bnb-8bit", "bnb-4bit", "gptq"],
)
@pytest.mark.parametrize("kind", ["trilm-latent", "trilm-packed"])
def test_trilm_refuses_a_quantization_config_instead_of_quantizing_nothing(built_dirs, kind, quantization_config):
    with pytest.raises(ValueError, match=r"TriLM does not take quantization_config .*1\.6 bits per weight"):
        AutoModelForCausalLM.from_pretrained(built_dirs[kind], quantization_config=quantization_config)


@pytest.mark.slow
def test_remote_code_on_an_old_transformers_names_the_version_it_needs(built_dirs, tmp_path):
    """A fresh interpreter without spectra_hf, whose transformers says it is 4.57.3, loads the saved TriLM with
    trust_remote_code: the remote code stops at its first line with the required version."""
    script = (
        "import transformers\n"
        "transformers.__version__ = '4.57.3'\n"
        "from transformers import AutoModelForCausalLM\n"
        f"AutoModelForCausalLM.from_pretrained({str(built_dirs['trilm-packed'])!r}, trust_remote_code=True)\n"
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


# ---- configs and tokenizers a user expects ------------------------------------------------------------------------


def _generate_warnings(model, tokenizer) -> tuple[torch.Tensor, list[str]]:
    """Batched greedy generation of PROMPTS, with the warnings transformers logged meanwhile."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    transformers_logging.add_handler(handler)
    try:
        batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
        output = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    finally:
        transformers_logging.remove_handler(handler)
    return output, [record.getMessage() for record in records]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["trilm-packed", "floatlm"])
def test_exports_generate_with_the_kv_cache_and_pad_left(model_dirs, kind):
    directory = model_dirs[kind]
    assert json.loads((directory / "config.json").read_text())["use_cache"] is True
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.padding_side == "left"
    model = _load(directory)
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    assert model(ids).past_key_values is not None
    # Batched greedy generation with the exported tokenizer: no padding warning (which a right-padding tokenizer
    # does get), and each row equals its prompt generated alone.
    batched, warnings = _generate_warnings(model, tokenizer)
    assert not [w for w in warnings if "padding" in w], warnings
    _, right_warnings = _generate_warnings(model, AutoTokenizer.from_pretrained(directory, padding_side="right"))
    assert any("right-padding was detected" in w for w in right_warnings), right_warnings
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
        assert batched[row, -8:].tolist() == alone[0, -8:].tolist()


# ---- transformers: pipeline, static cache -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_text_generation_pipeline_and_static_cache(model_dirs, kind):
    from transformers import pipeline

    directory = model_dirs[kind]
    generator = pipeline("text-generation", model=str(directory), tokenizer=str(directory), device="cpu")
    text = generator(PROMPTS[0], max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert text.startswith(PROMPTS[0]) and len(text) > len(PROMPTS[0])

    model = generator.model
    tokenizer = AutoTokenizer.from_pretrained(directory)
    inputs = tokenizer(PROMPTS[1], return_tensors="pt")
    dynamic = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    static = model.generate(**inputs, max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert static.tolist() == dynamic.tolist()


# ---- peft, accelerate ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_peft_lora_forward_and_backward(model_dirs, kind):
    from peft import LoraConfig, get_peft_model

    model = _load(model_dirs[kind])
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        base = model(ids).logits
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    out = lora(ids, labels=ids)
    # LoRA's B starts at zero: the adapted model computes what the base model computes.
    torch.testing.assert_close(out.logits, base, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    grads = {name: p.grad for name, p in lora.named_parameters() if p.requires_grad}
    assert grads and all(name.count("lora_") == 1 for name in grads)
    assert any(g is not None and g.abs().sum() > 0 for name, g in grads.items() if "lora_B" in name)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["trilm-latent", "floatlm"])
def test_accelerate_prepares_and_trains_a_step(model_dirs, kind):
    from accelerate import Accelerator

    model = _load(model_dirs[kind]).train()
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = model(ids, labels=ids).loss
    accelerator.backward(loss)
    optimizer.step()
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "lm_head.weight" in changed


@pytest.mark.slow
def test_accelerate_prepares_a_packed_trilm_for_inference(model_dirs):
    from accelerate import Accelerator

    model = _load(model_dirs["trilm-packed"])
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    with torch.no_grad():
        expected = model(ids).logits
        prepared = Accelerator(cpu=True).prepare_model(model, evaluation_mode=True)
        torch.testing.assert_close(prepared(ids).logits, expected)


# ---- lm-eval ------------------------------------------------------------------------------------------------------


QUESTIONS = [
    {"question": "The capital of France is", "choices": ["Paris", "a number", "green"], "label": 0},
    {"question": "Return the value of", "choices": ["the object", "blue water", "seven"], "label": 1},
    {"question": "This function returns", "choices": ["a string", "the list", "None"], "label": 2},
    {"question": "If the argument is omitted,", "choices": ["it defaults", "the cat", "raise"], "label": 0},
]


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation | context), the continuation tokens being the tail of the whole text's tokens."""
    whole = tokenizer(context + continuation).input_ids
    start = len(tokenizer(context).input_ids)
    with torch.no_grad():
        logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(start, len(whole)))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_lm_eval_hflm_on_a_local_task(model_dirs, kind, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    task = {
        "task": f"compat_mc_{kind.replace('-', '_')}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    model = _load(model_dirs[kind])
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[kind])
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    results = simple_evaluate(model=lm, tasks=[task], bootstrap_iters=0, log_samples=False)["results"]
    (scores,) = results.values()
    # The reference: pick the choice with the highest log-likelihood (" choice" after the question), by hand.
    picks = [
        max(
            range(len(q["choices"])),
            key=lambda c: _loglikelihood(model, tokenizer, q["question"], " " + q["choices"][c]),
        )
        for q in QUESTIONS
    ]
    correct = sum(p == q["label"] for p, q in zip(picks, QUESTIONS, strict=True))
    assert scores["acc,none"] == pytest.approx(correct / len(QUESTIONS))


# ---- bitsandbytes -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("config", [BitsAndBytesConfig(load_in_8bit=True), BitsAndBytesConfig(load_in_4bit=True)],
                         ids=["8bit", "4bit"])
def test_bitsandbytes_quantizes_a_floatlm(model_dirs, config):
    import bitsandbytes as bnb

    reference = _load(model_dirs["floatlm"])
    quantized = AutoModelForCausalLM.from_pretrained(model_dirs["floatlm"], quantization_config=config)
    kinds = {type(m) for m in quantized.modules() if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))}
    assert kinds and quantized.get_memory_footprint() < reference.get_memory_footprint()
    ids = torch.randint(0, reference.config.vocab_size, (1, 12))
    with torch.no_grad():
        expected, actual = reference(ids).logits, quantized(ids).logits.float()
    # Quantization error, not garbage: the quantized logits follow the float ones closely.
    correlation = torch.corrcoef(torch.stack([expected.flatten(), actual.flatten()]))[0, 1]
    assert correlation > 0.95


# ---- huggingface_hub ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_hub_download_of_each_kind_loads_the_same_model(model_dirs, local_hub, tmp_path):
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi()
    ids = torch.randint(0, 100, (1, 10))
    for kind, directory in model_dirs.items():
        repo_id = f"compat/{kind}"
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=directory, ignore_patterns=["optimizer.pt", "*.pth", "rng_state*"]
        )
        local = snapshot_download(repo_id, cache_dir=tmp_path / "cache")
        assert (Path(local) / "config.json").read_bytes() == (directory / "config.json").read_bytes()
        downloaded = AutoModelForCausalLM.from_pretrained(repo_id, cache_dir=tmp_path / "cache", dtype=torch.float32)
        with torch.no_grad():
            assert torch.equal(downloaded(ids).logits, _load(directory)(ids).logits), kind


# ---- the card of a trained export ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_card_of_a_trained_export_states_its_own_training(model_dirs, corpus_files):
    from spectra_hf.cards import render_model_card
    from spectra_hf.checkpoints.exports import read_export_info
    from spectra_hf.suite import get_model

    directory = model_dirs["trilm-packed"]
    export = read_export_info(directory)
    assert export.extra["training_data"] == {"files": [corpus_files[0].name]}
    config = json.loads((directory / "config.json").read_text())
    card = render_model_card(model=get_model("TriLM_99M"), org="compat", config=config, export=export)
    latent = _load(model_dirs["trilm-latent"])
    assert f"| parameters | {latent.num_parameters():,} (" in card
    assert f"| training data | {corpus_files[0].name} |" in card and "| optimizer steps | 4 |" in card
    assert "SlimPajama-627B" not in card.split("---")[1]  # the YAML metadata claims no dataset
