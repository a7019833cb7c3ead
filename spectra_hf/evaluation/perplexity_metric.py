"""Perplexity and bits per byte as an `evaluate` module that works offline and takes the model object.

Load it with `spectra_hf.evaluation.text_perplexity.load_perplexity_metric()` (or
`evaluate.load(<path of this file>)`); the Hub's `evaluate.load("perplexity")` needs network and a model id. The
computation is `spectra_hf.evaluation.text_perplexity.perplexity`.
"""

import datasets
import evaluate

from spectra_hf.evaluation.text_perplexity import perplexity

_DESCRIPTION = """
Perplexity (exp of the mean per-token negative log-likelihood) and bits per byte (total NLL in bits over the UTF-8
bytes of the texts) of a causal language model. Each text is scored after a bos token; texts longer than
`max_length` tokens are covered by a sliding window that starts every `stride` tokens.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the texts to score, one document each.
    model (PreTrainedModel): a causal LM object (any device).
    tokenizer (PreTrainedTokenizerBase): its tokenizer.
    max_length (int, optional): tokens per model call; default the model's context length.
    stride (int, optional): tokens between window starts; default `max_length - 1`.
    batch_size (int, optional): windows per model call; default 1.
Returns:
    perplexity, bits_per_byte, nll_per_token, num_tokens, num_bytes, num_documents.
Examples:
    >>> metric = evaluate.load("spectra_hf/evaluation/perplexity_metric.py")  # doctest: +SKIP
    >>> metric.compute(predictions=["Hello world."], model=model, tokenizer=tokenizer)  # doctest: +SKIP
"""

_CITATION = """
@article{kaushal2024spectra,
  title={Spectra: Surprising Effectiveness of Pretraining Ternary Language Models at Scale},
  author={Kaushal, Ayush and Vaidhya, Tejas and Mondal, Arnab Kumar and Pandey, Tejas and Bhagat, Aaryan and Rish, Irina},
  journal={arXiv preprint arXiv:2407.12327},
  year={2024}
}
"""  # noqa: E501 - the citation is quoted verbatim (BibTeX entry as published)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model, tokenizer, max_length=None, stride=None, batch_size=1):
        return perplexity(
            model, tokenizer, predictions, max_length=max_length, stride=stride, batch_size=batch_size
        )
