"""Task heads (sequence / token classification, extractive QA) for TriLM and FloatLM, through the Auto classes.

References: transformers' own Llama heads on the same weights (a FloatLM is a Llama; a TriLM's body is compared with
a Llama whose decoder linears hold the ternary g*T), and the heads' losses computed here with torch.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from spectra_hf.modeling import TernaryLinear
from spectra_hf.suite import config_for

HEADS = {
    AutoModelForSequenceClassification: "ForSequenceClassification",
    AutoModelForTokenClassification: "ForTokenClassification",
    AutoModelForQuestionAnswering: "ForQuestionAnswering",
}


@pytest.mark.parametrize("name", ["TriLM_99M", "FloatLM_99M"])
@pytest.mark.parametrize("auto_class", list(HEADS))
def test_heads_build_run_train_and_reload(name, auto_class, tmp_path):
    config = config_for(name, tiny=True, num_labels=3, pad_token_id=1)
    model = auto_class.from_config(config)
    family = name.split("_")[0]
    assert type(model).__name__ == family + HEADS[auto_class]
    assert any(isinstance(m, TernaryLinear) for m in model.modules()) == (family == "TriLM")
    input_ids = torch.randint(2, config.vocab_size, (2, 12))  # [batch, seq]
    if auto_class is AutoModelForSequenceClassification:
        out = model(input_ids=input_ids, labels=torch.tensor([0, 2]))
        assert out.logits.shape == (2, 3)
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])))
    elif auto_class is AutoModelForTokenClassification:
        labels = torch.randint(0, 3, (2, 12))
        out = model(input_ids=input_ids, labels=labels)
        assert out.logits.shape == (2, 12, 3)
    else:
        out = model(input_ids=input_ids, start_positions=torch.tensor([1, 3]), end_positions=torch.tensor([4, 5]))
        assert out.start_logits.shape == out.end_logits.shape == (2, 12)
    out.loss.backward()  # the straight-through estimator reaches the latent ternary weights
    assert all(p.grad is not None for n, p in model.named_parameters() if "layers.0" in n)

    model.save_pretrained(tmp_path)
    reloaded = auto_class.from_pretrained(tmp_path)
    assert type(reloaded) is type(model)
    with torch.no_grad():
        first, again = model.eval()(input_ids=input_ids), reloaded.eval()(input_ids=input_ids)
    key = "start_logits" if auto_class is AutoModelForQuestionAnswering else "logits"
    torch.testing.assert_close(again[key], first[key])


def test_floatlm_classifier_is_transformers_llama_classifier(tmp_path):
    config = config_for("FloatLM_99M", tiny=True, num_labels=2, pad_token_id=1)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(tmp_path)
    llama_config = LlamaConfig(**{k: v for k, v in config.to_dict().items() if k not in ("model_type", "auto_map")})
    llama = LlamaForSequenceClassification(llama_config).eval()
    llama.load_state_dict(model.state_dict())
    input_ids = torch.tensor([[5, 6, 7, 1, 1], [8, 9, 10, 11, 12]])  # right-padded: pooled at the last non-pad token
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits, llama(input_ids=input_ids).logits)


def test_a_causal_lm_checkpoint_loads_into_a_classifier(tmp_path):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(config_for("TriLM_99M", tiny=True))
    lm.save_pretrained(tmp_path)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    for key, value in lm.model.state_dict().items():
        torch.testing.assert_close(classifier.model.state_dict()[key], value)
