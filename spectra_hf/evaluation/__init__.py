"""Evaluation: perplexity and bits per byte, lm-evaluation-harness tasks, and the results file cards read."""

from spectra_hf.evaluation.text_perplexity import load_perplexity_metric, load_texts, perplexity

__all__ = ["load_perplexity_metric", "load_texts", "perplexity"]
