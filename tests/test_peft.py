"""LoRA (peft) on TriLM and FloatLM through SpectraTrainer: only adapters train, the ternary base stays frozen and
ternary, and the honest merge options behave as documented in spectra_hf.training.lora."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, default_data_collator

from spectra_hf.modeling import TernaryLinear
from spectra_hf.suite import config_for
from spectra_hf.training import SpectraTrainer, SpectraTrainingArguments
from spectra_hf.training.arguments import DataArguments
from spectra_hf.training.data import load_text, pack_documents
from spectra_hf.training.lora import merge_lora_to_float

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


@pytest.fixture(scope="module")
def dataset(tokenizer, corpus_files):
    documents = load_text(DataArguments(data_files=[str(corpus_files[0])]))
    return pack_documents(documents, tokenizer, text_column="text", block_size=32)


def lora_model(name: str):
    model = AutoModelForCausalLM.from_config(config_for(name, tiny=True))
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0))


def lora_train(name: str, dataset, tmp_path, steps: int = 6):
    peft_model = lora_model(name)
    before = {n.replace("base_model.model.", "", 1).replace(".base_layer", ""): p.detach().clone()
              for n, p in peft_model.named_parameters()}
    args = SpectraTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, max_steps=steps, per_device_train_batch_size=2, learning_rate=1e-2,
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
    )
    trainer = SpectraTrainer(model=peft_model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    trainer.train()
    return peft_model, before, trainer


def test_lora_on_trilm_trains_only_adapters_and_the_base_stays_ternary(dataset, tmp_path) -> None:
    peft_model, before, trainer = lora_train("TriLM_1.1B", dataset, tmp_path)
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    for name, param in peft_model.named_parameters():
        assert (id(param) in trained) == ("lora_" in name), name
    base = peft_model.get_base_model()
    for name, param in base.named_parameters():
        if "lora_" not in name:  # frozen: bitwise unchanged
            assert torch.equal(param, before[name.replace(".base_layer", "")]), name
    assert any(not torch.all(p == 0) for n, p in peft_model.named_parameters() if "lora_B" in n)
    # Every targeted layer still multiplies with g * T (values {-g, 0, +g} per shard) under its adapter.
    q = base.model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, TernaryLinear)
    digits, scales = q.base_layer.ternary_weight()
    assert set(digits.unique().tolist()) <= {-1, 0, 1} and scales.numel() == 2
    x = torch.randn(3, q.base_layer.in_features)
    dense = digits.float() * scales.repeat_interleave(digits.shape[0] // 2)[:, None]
    torch.testing.assert_close(q.base_layer(x), F.linear(x, dense))
    assert trainer.family == "trilm"


def test_merge_options_for_a_ternary_base() -> None:
    peft_model = lora_model("TriLM_99M")
    with torch.no_grad():  # a substantial adapter, so that re-ternarization visibly changes the function
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        tuned = peft_model(ids).logits
        dense = merge_lora_to_float(peft_model)(ids).logits
        torch.testing.assert_close(dense, tuned, rtol=1e-4, atol=1e-4)  # option 2: exact, dense float
        requantized = peft_model.merge_and_unload()(ids).logits  # option 3: ternary again, not the tuned function
    assert (requantized - tuned).abs().max() > 1e-2


def test_lora_on_floatlm_merges_exactly(dataset, tmp_path) -> None:
    peft_model, _before, trainer = lora_train("FloatLM_99M", dataset, tmp_path, steps=3)
    assert trainer.family == "floatlm"
    ids = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        tuned = peft_model(ids).logits
        torch.testing.assert_close(merge_lora_to_float(peft_model)(ids).logits, tuned, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(peft_model.merge_and_unload()(ids).logits, tuned, rtol=1e-5, atol=1e-5)
