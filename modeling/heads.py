"""Task heads for TriLM and FloatLM: transformers' Llama heads on the Spectra decoder stacks.

Sequence classification (reward models, classifiers), token classification and extractive question answering, as
`LlamaForSequenceClassification` / `LlamaForTokenClassification` / `LlamaForQuestionAnswering` compute them (same
forward, pooling on the last non-pad token, losses), with `TriLMModel` (ternary decoder linears) or `FloatLMModel`
as the body. The body is built directly rather than through `AutoModel.from_config`, so the heads also work as
remote code, where the model types are not registered. Loading a causal-LM checkpoint into a head keeps its body
weights and initializes the head (transformers reports the new weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn
from transformers.models.llama.modeling_llama import (
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaPreTrainedModel,
)

from .checkpoint_checks import CheckedLoadingMixin
from .configuration_floatlm import FloatLMConfig
from .configuration_trilm import TriLMConfig
from .modeling_floatlm import FloatLMModel, FloatLMPreTrainedModel
from .modeling_trilm import TriLMModel, TriLMPreTrainedModel


def _decoder(config: TriLMConfig | FloatLMConfig) -> TriLMModel | FloatLMModel:
    return TriLMModel(config) if isinstance(config, TriLMConfig) else FloatLMModel(config)


def _num_labels(config: TriLMConfig | FloatLMConfig) -> int:
    num_labels = config.num_labels
    assert num_labels is not None, "PretrainedConfig always fills id2label in (2 labels by default)"
    return num_labels


if TYPE_CHECKING:
    # The mixins below only ever sit in front of a LlamaPreTrainedModel (the concrete classes at the bottom).
    _HeadBase = LlamaPreTrainedModel
else:
    _HeadBase = object


class _HeadLoading(_HeadBase):
    """Heads load as transformers' Llama heads do: a causal-LM checkpoint gives the body and a new head (which
    transformers reports as newly initialized), a head checkpoint gives both. The causal-LM completeness checks of
    `CheckedLoadingMixin` (an LM head must be stored, no weight may be missing) do not apply to a head."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        result = super(CheckedLoadingMixin, cls).from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = result[0] if isinstance(result, tuple) else result
        if getattr(model.config, "weight_format", None) == "packed":
            model.prepare_ternary_inference()
        return result


class _SequenceClassification(_HeadLoading):
    """`GenericForSequenceClassification.__init__` with the Spectra body: score [hidden -> num_labels], no bias."""

    def __init__(self, config: TriLMConfig | FloatLMConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.num_labels = _num_labels(config)
        self.model = _decoder(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()


class _TokenClassification(_HeadLoading):
    """`GenericForTokenClassification.__init__` with the Spectra body: dropout, then score [hidden -> num_labels]."""

    def __init__(self, config: TriLMConfig | FloatLMConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = _decoder(config)
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout", None)
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        self.score = nn.Linear(
            config.hidden_size, _num_labels(config), bias=getattr(config, "token_classification_bias", True)
        )
        self.post_init()


class _QuestionAnswering(_HeadLoading):
    """`GenericForQuestionAnswering.__init__` with the Spectra body: qa_outputs [hidden -> 2] (start, end logits).

    The body is `self.model`, as in every other Spectra class (Llama's QA head calls it `transformer`).
    """

    base_model_prefix = "model"

    def __init__(self, config: TriLMConfig | FloatLMConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.model = _decoder(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()


class TriLMForSequenceClassification(_SequenceClassification, TriLMPreTrainedModel, LlamaForSequenceClassification):
    """TriLM with a sequence-classification head: `input_ids` [batch, seq] -> `logits` [batch, num_labels]."""


class TriLMForTokenClassification(_TokenClassification, TriLMPreTrainedModel, LlamaForTokenClassification):
    """TriLM with a token-classification head: `input_ids` [batch, seq] -> `logits` [batch, seq, num_labels]."""


class TriLMForQuestionAnswering(_QuestionAnswering, TriLMPreTrainedModel, LlamaForQuestionAnswering):
    """TriLM with an extractive-QA head: `input_ids` [batch, seq] -> `start_logits`, `end_logits` [batch, seq]."""


class FloatLMForSequenceClassification(_SequenceClassification, FloatLMPreTrainedModel, LlamaForSequenceClassification):
    """FloatLM with a sequence-classification head: `input_ids` [batch, seq] -> `logits` [batch, num_labels]."""


class FloatLMForTokenClassification(_TokenClassification, FloatLMPreTrainedModel, LlamaForTokenClassification):
    """FloatLM with a token-classification head: `input_ids` [batch, seq] -> `logits` [batch, seq, num_labels]."""


class FloatLMForQuestionAnswering(_QuestionAnswering, FloatLMPreTrainedModel, LlamaForQuestionAnswering):
    """FloatLM with an extractive-QA head: `input_ids` [batch, seq] -> `start_logits`, `end_logits` [batch, seq]."""


__all__ = [
    "FloatLMForQuestionAnswering",
    "FloatLMForSequenceClassification",
    "FloatLMForTokenClassification",
    "TriLMForQuestionAnswering",
    "TriLMForSequenceClassification",
    "TriLMForTokenClassification",
]
