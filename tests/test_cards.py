"""Model cards (spectra_hf.cards): rendered for every suite model, parsed back with huggingface_hub's ModelCard."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from spectra_hf.cards import Revision, render_checkpoint_card, render_model_card
from spectra_hf.evaluation.results import build_results
from spectra_hf.suite import all_models, config_for

ORG = "cards"
REVISIONS = [Revision(branch=f"step{s}", step=s, tokens_seen=s * 2**20) for s in (1000, 2000)]


def _config(model) -> dict:
    """The suite architecture of `model` (a config only: no weights are built)."""
    return config_for(model.base_model or model.name).to_dict()


def _card(model, **kwargs) -> ModelCard:
    revisions = [] if model.family == "quantlm" else REVISIONS
    return ModelCard(render_model_card(model=model, org=ORG, config=_config(model), revisions=revisions, **kwargs))


@pytest.mark.parametrize("model", all_models(), ids=lambda m: m.name)
def test_card_metadata_siblings_and_architecture(model):
    card = _card(model)
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation" and data["datasets"] == ["cerebras/SlimPajama-627B"]
    assert {"spectra-suite", model.family} <= set(data["tags"])
    if model.family == "quantlm":
        assert (data["base_model"], data["base_model_relation"]) == (f"{ORG}/FloatLM_{model.size}", "quantized")
        assert f"| GPTQ bits | {model.bits} |" in card.text
    else:
        assert "base_model" not in data and "base_model_relation" not in data
    # The size table lists the six models of this size with the registry's size in bits, this one in bold.
    rows = re.findall(r"^\| \**(\w+[.\w]*)\** \| ([\d.]+) bits \| ([\d.]+) \|", card.text, flags=re.MULTILINE)
    siblings = [m for m in all_models() if m.size == model.size]
    assert [r[0] for r in rows] == [m.name for m in siblings]
    assert [float(r[2]) for r in rows] == [round(m.size_bits / 1e9, 3) for m in siblings]
    assert f"| **{model.name}** |" in card.text
    config = _config(model)
    assert f"| layers | {config['num_hidden_layers']} |" in card.text
    if model.family == "trilm":
        shards = model.spec.model_parallel
        assert f"| ternary scale shards (pretraining_model_parallel) | {shards} |" in card.text
        assert f"| peak learning rate after the halfway drop | {model.spec.trilm_lr_after_drop:g} |" in card.text
    for revision in ([] if model.family == "quantlm" else REVISIONS):
        assert f"| `{revision.branch}` | {revision.step} |" in card.text


def test_quickstart_blocks_compile_and_target_the_repo():
    for model in all_models():
        text = render_model_card(model=model, org=ORG, config=_config(model), revisions=REVISIONS)
        blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
        assert len(blocks) == 2
        for block in blocks:
            compile(block, model.name, "exec")
        assert f'"{ORG}/{model.name}", trust_remote_code=True' in blocks[0]
        assert "import spectra_hf" in blocks[1] and 'revision="step2000"' in blocks[1]


@pytest.mark.parametrize("bits", [4, 6])
def test_gptq_card_uses_stock_transformers_where_it_can_and_spectra_hf_everywhere(bits):
    model = next(m for m in all_models() if m.name == f"QuantLM_99M_{bits}bit")
    config = {**_config(model), "model_type": "llama"}
    config["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": -1}
    text = render_model_card(model=model, org=ORG, config=config)
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert "| quantization | gptq " + str(bits) + "-bit, per channel |" in text
    assert f'load_quantlm(snapshot_download("{ORG}/QuantLM_99M_{bits}bit"))' in blocks[-1]
    if bits == 4:  # transformers' GPTQConfig loads 2/3/4/8 bits
        assert len(blocks) == 2 and f'from_pretrained("{ORG}/QuantLM_99M_4bit")' in blocks[0]
        assert "trust_remote_code" not in blocks[0]
    else:
        assert len(blocks) == 1 and "does not load 6-bit" in text


def test_spectra_gptq_card_loads_through_the_auto_class_after_import_spectra_hf():
    model = next(m for m in all_models() if m.name == "QuantLM_99M_6bit")
    config = {**_config(model), "model_type": "llama"}
    config["quantization_config"] = {"quant_method": "spectra_gptq", "bits": 6, "group_size": -1}
    text = render_model_card(model=model, org=ORG, config=config)
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    compile(block, model.name, "exec")
    assert block.startswith("import spectra_hf") and f'from_pretrained("{ORG}/QuantLM_99M_6bit")' in block
    assert "`import spectra_hf` registers" in text and "load_quantlm" not in text


def test_spectra_gptq_card_with_remote_code_shows_trust_remote_code_first():
    """An export that ships quantlm_gptq.py (config.json's auto_map) loads with stock transformers too."""
    from spectra_hf.quantization.hf_quantizer import remote_code_auto_map

    model = next(m for m in all_models() if m.name == "QuantLM_99M_6bit")
    config = {**_config(model), "model_type": "llama", "auto_map": remote_code_auto_map()}
    config["quantization_config"] = {"quant_method": "spectra_gptq", "bits": 6, "group_size": -1}
    text = render_model_card(model=model, org=ORG, config=config, has_tokenizer=False)
    stock, registered = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    for block in (stock, registered):
        compile(block, model.name, "exec")
    assert f'from_pretrained("{ORG}/QuantLM_99M_6bit", trust_remote_code=True)' in stock
    assert "spectra_hf" not in stock and registered.startswith("import spectra_hf")
    assert "trust_remote_code" not in registered and "ships the code of that method" in text


def test_unpacked_card_loads_without_remote_code():
    model = next(m for m in all_models() if m.name == "TriLM_1.1B")
    config = {key: value for key, value in _config(model).items() if key != "auto_map"}  # a plain Llama config
    config["model_type"] = "llama"
    text = render_model_card(model=model, org=ORG, config=config, variant="unpacked")
    card = ModelCard(text)
    assert "unpacked" in card.data.tags and "base_model" not in card.data.to_dict()
    assert f'from_pretrained("{ORG}/TriLM_1.1B_Unpacked")' in text and "trust_remote_code" not in text
    with pytest.raises(ValueError, match="variant"):
        render_model_card(model=model, org=ORG, config={}, variant="gguf")


def test_eval_results_from_a_metric_dict_and_from_an_eval_results_file():
    model = all_models()[0]
    card = _card(model, evals={"arc_easy/acc_norm": 0.41, "piqa": 0.6})
    got = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert got == {("arc_easy", "acc_norm"): 0.41, ("piqa", "acc"): 0.6}
    assert "| arc_easy | acc_norm | 0.41 |" in card.text

    results = build_results(
        model=f"{ORG}/{model.name}",
        revision="main",
        perplexity={"perplexity": 31.25, "bits_per_byte": 1.125},
        perplexity_dataset="wikitext",
        perplexity_split="test",
    )
    card = _card(model, evals=results)
    got = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert got == {"perplexity": 31.25, "bits_per_byte": 1.125}
    assert card.data.to_dict()["model-index"][0]["name"] == model.name


def test_checkpoint_card_names_its_step_and_parses(local_hub):
    model = next(m for m in all_models() if m.name == "FloatLM_390M")
    text = render_checkpoint_card(model=model, org=ORG, revision=REVISIONS[1])
    card = ModelCard(text)
    assert card.data.license == "apache-2.0" and "floatlm" in card.data.tags
    assert "at step 2000" in text and "2.1B training" in text
    assert f'"{ORG}/FloatLM_390M", revision="step2000", trust_remote_code=True' in text
    card.validate()  # the local Hub's /api/validate-yaml accepts the metadata (HF_ENDPOINT points at it)
    _card(model).validate()


def _demo_shaped_export(directory, tokenizer, *, extra: dict | None = None):
    """A scaled-down TriLM published under a suite name, as the demo trains one (hidden 128, 4 layers, vocab of
    its own tokenizer), exported packed with its export metadata. Returns the latent model it was packed from."""
    import torch
    from transformers import AutoModelForCausalLM

    from spectra_hf.checkpoints.exports import ExportInfo, write_export_info

    torch.manual_seed(0)
    config = config_for("TriLM_99M", hidden_size=128, intermediate_size=384, num_attention_heads=4,
                        num_key_value_heads=4, num_hidden_layers=4, vocab_size=len(tokenizer),
                        max_position_embeddings=128)
    latent = AutoModelForCausalLM.from_config(config)
    latent.save_pretrained(directory, weight_format="packed")
    tokenizer.save_pretrained(directory)
    write_export_info(directory, ExportInfo(name="TriLM_99M", family="trilm", step=300, tokens_seen=300 * 8 * 128,
                                            format="packed", extra=extra or {}))
    return latent


def test_a_scaled_down_model_card_states_its_own_parameters_size_and_training(tmp_path, tokenizer):
    from safetensors import safe_open

    from spectra_hf.checkpoints.exports import read_export_info
    from spectra_hf.modeling import TernaryLinear

    latent = _demo_shaped_export(tmp_path, tokenizer)
    model = next(m for m in all_models() if m.name == "TriLM_99M")
    config = json.loads((tmp_path / "config.json").read_text())
    text = render_model_card(model=model, org=ORG, config=config, export=read_export_info(tmp_path))
    card = ModelCard(text)

    # The real count is the latent model's (transformers' own count); the packed header holds far fewer elements.
    params = latent.num_parameters()
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        header_elements = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118 - safe_open has keys(), not iteration
    assert header_elements < 0.8 * params
    assert f"| parameters | {params:,} (" in text
    # Size as the paper counts it, from the model's own tensors: ternary weights at 1.58 bits, the rest at 16.
    ternary = sum(m.weight.numel() for m in latent.modules() if isinstance(m, TernaryLinear))
    expected_mbit = (ternary * 1.58 + (params - ternary) * 16) / 1e6
    assert f"| size as the paper counts it | {expected_mbit:,.3f} Mbit" in text
    assert "| optimizer steps | 300 |" in text and "| training tokens | 307K |" in text
    assert "| training data | not recorded in this export |" in text
    # Nothing of the paper's 99M is claimed for it: no dataset in the metadata, no 0.9-Gbit sibling table, no recipe.
    assert card.data.to_dict().get("datasets") is None
    assert "scaled-down model published under the suite's name" in text
    assert "Size next to its siblings" not in text and "| training tokens | 300B |" not in text
    assert f"{model.size_bits / 1e9:.3f}" not in text


def test_a_card_names_the_training_data_its_export_records(tmp_path, tokenizer):
    from spectra_hf.checkpoints.exports import read_export_info

    _demo_shaped_export(tmp_path, tokenizer, extra={"training_data": {"files": ["train.txt"]}})
    model = next(m for m in all_models() if m.name == "TriLM_99M")
    config = json.loads((tmp_path / "config.json").read_text())
    text = render_model_card(model=model, org=ORG, config=config, export=read_export_info(tmp_path))
    assert "| training data | train.txt |" in text and "datasets" not in ModelCard(text).data.to_dict()


@pytest.mark.slow
def test_card_quickstart_loads_the_tokenizer_without_a_prompt(tmp_path, tokenizer, local_hub):
    """The card's stock-transformers block, run as written in a fresh interpreter without spectra_hf and with no
    terminal to answer transformers' trust_remote_code [y/N] question, loads tokenizer and model from the Hub."""
    from huggingface_hub import HfApi

    from spectra_hf.checkpoints.exports import read_export_info

    _demo_shaped_export(tmp_path / "repo", tokenizer)
    model = next(m for m in all_models() if m.name == "TriLM_99M")
    config = json.loads((tmp_path / "repo" / "config.json").read_text())
    card = render_model_card(model=model, org="cardrun", config=config, export=read_export_info(tmp_path / "repo"))
    (tmp_path / "repo" / "README.md").write_text(card)
    api = HfApi()
    api.create_repo("cardrun/TriLM_99M", exist_ok=True)
    api.upload_folder(repo_id="cardrun/TriLM_99M", folder_path=tmp_path / "repo")
    stock = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)[0]
    assert "AutoTokenizer" in stock and "spectra_hf" not in stock
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", stock], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[y/N]" not in run.stdout + run.stderr
    assert run.stdout.strip().startswith("Ternary language models")  # the prompt, decoded back, then 20 tokens
