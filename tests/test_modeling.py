"""TriLM / FloatLM models: Auto registration, round trips, Llama equivalence, generation, remote code, training."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import spectra_hf
from spectra_hf import FloatLMForCausalLM, FloatLMModel, TernaryLinear, TriLMConfig, TriLMForCausalLM, TriLMModel
from spectra_hf.suite import config_for
from spectra_hf.testing.remote_code import load_without_spectra_hf

FAMILIES = {"TriLM_1.1B": TriLMForCausalLM, "FloatLM_1.1B": FloatLMForCausalLM}


def tiny(name: str, **overrides):
    return AutoModelForCausalLM.from_config(config_for(name, tiny=True, **overrides)).eval()


def stock_llama(config) -> LlamaForCausalLM:
    """transformers' own LlamaForCausalLM with the same architecture (random weights, eval mode)."""
    keys = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "auto_map")}
    return LlamaForCausalLM(LlamaConfig(**keys)).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_save_and_auto_reload_give_identical_logits(name: str, tmp_path) -> None:
    model = tiny(name)
    assert type(model) is FAMILIES[name]
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert (tmp_path / config["auto_map"]["AutoModelForCausalLM"].split(".")[0]).with_suffix(".py").is_file()

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is FAMILIES[name]
    ids = torch.randint(0, model.config.vocab_size, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), type(model.config))
    assert isinstance(AutoModel.from_pretrained(tmp_path), (TriLMModel, FloatLMModel))


def test_trilm_has_ternary_linears_only_inside_decoder_blocks() -> None:
    model = tiny("TriLM_2.4B")
    ternary = {name for name, m in model.named_modules() if isinstance(m, TernaryLinear)}
    assert len(ternary) == 7 * model.config.num_hidden_layers
    assert all(".layers." in name for name in ternary)
    assert not isinstance(model.lm_head, TernaryLinear)
    assert {m.shards for m in model.modules() if isinstance(m, TernaryLinear)} == {3}


def test_floatlm_is_llama(tmp_path) -> None:
    model = tiny("FloatLM_99M")
    llama = stock_llama(model.config)
    llama.load_state_dict(model.state_dict())
    ids = torch.randint(0, model.config.vocab_size, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, llama(ids).logits, rtol=0, atol=0)


def test_trilm_equals_llama_on_effective_weights() -> None:
    """A TriLM is a Llama whose block linears hold g * T: check against stock LlamaForCausalLM."""
    model = tiny("TriLM_1.1B")
    llama = stock_llama(model.config)
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, TernaryLinear):
            digits, scales = module.ternary_weight()
            shape = (-1, 1) if module.shard_dim == 0 else (1, -1)
            per_index = scales.repeat_interleave(module.weight.shape[module.shard_dim] // module.shards)
            state[f"{name}.weight"] = digits.float() * per_index.reshape(shape)
    llama.load_state_dict(state)
    ids = torch.randint(0, model.config.vocab_size, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, llama(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_generate_with_kv_cache_matches_no_cache_greedy_decode(name: str) -> None:
    model = tiny(name)
    prompt = torch.randint(1, model.config.vocab_size, (1, 6))
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    # Independent greedy decode: full forward over the whole sequence at every step, no cache.
    ids = prompt
    with torch.no_grad():
        for _ in range(12):
            next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(cached, ids)


@pytest.mark.parametrize("name", FAMILIES)
def test_remote_code_loads_without_spectra_hf(name: str, tmp_path) -> None:
    model = tiny(name)
    model.save_pretrained(tmp_path / "ckpt")
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    (loaded,) = load_without_spectra_hf([tmp_path / "ckpt"], ids, work_dir=tmp_path, env=env).loads
    assert loaded.module.startswith("transformers_modules") and loaded.class_name == type(model).__name__
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits, model(ids).logits, rtol=0, atol=0)


def test_tiny_trilm_learns_local_text(tokenizer, corpus_texts) -> None:
    """100 steps of a plain torch loop on local text lower a tiny TriLM's loss well below its start."""
    ids = torch.tensor([t for doc in corpus_texts[:200] for t in tokenizer(doc)["input_ids"] + [0]])
    block = 64
    blocks = ids[: len(ids) // block * block].view(-1, block)
    model = AutoModelForCausalLM.from_config(config_for("TriLM_99M", tiny=True, vocab_size=len(tokenizer)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        batch = blocks[torch.randint(0, len(blocks), (8,), generator=generator)]
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    start, end = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert end < start - 1.0, (start, end)
    stats = model.ternary_stats()
    assert len(stats) == 14
    assert all(0.0 < s["zero_fraction"] < 1.0 and len(s["scales"]) == 1 for s in stats.values())


def test_ternary_stats_fractions_add_up() -> None:
    stats = tiny("TriLM_3.9B").ternary_stats()
    for layer in stats.values():
        assert layer["zero_fraction"] + layer["plus_fraction"] + layer["minus_fraction"] == pytest.approx(1.0)
        assert len(layer["scales"]) == 6


def test_bad_configs_are_refused_with_the_reason() -> None:
    with pytest.raises(Exception, match="not a multiple of the number of attention heads"):
        TriLMConfig(hidden_size=100, num_attention_heads=8)
    with pytest.raises(ValueError, match="pretraining_model_parallel=3 does not divide num_attention_heads=8"):
        TriLMConfig(pretraining_model_parallel=3)
    with pytest.raises(ValueError, match="positive integer"):
        TriLMConfig(pretraining_model_parallel=0)


def test_missing_and_corrupt_checkpoints_get_one_clear_error(tmp_path) -> None:
    # (The Auto classes read config.json before any model class runs, so a missing directory is checked here.)
    with pytest.raises(OSError, match=r"no checkpoint at .*does not exist"):
        TriLMForCausalLM.from_pretrained(tmp_path / "missing")
    model = tiny("TriLM_99M")
    model.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(OSError, match=r"corrupt checkpoint file .*model\.safetensors"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(OSError, match=r"config\.json is missing"):
        TriLMForCausalLM.from_pretrained(tmp_path / "ckpt")


def test_registration_is_exported() -> None:
    exported = {"TriLMConfig", "TriLMModel", "TriLMForCausalLM", "FloatLMConfig", "FloatLMModel",
                "FloatLMForCausalLM", "SpectraTrainer"}
    assert exported <= set(spectra_hf.__all__)
    assert AutoConfig.for_model("trilm").__class__ is TriLMConfig
    assert AutoConfig.for_model("floatlm").__class__ is spectra_hf.FloatLMConfig
    assert spectra_hf.SpectraTrainer.__name__ == "SpectraTrainer"


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = tiny("TriLM_1.1B").train()
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], rtol=1e-5, atol=1e-6, msg=name)
