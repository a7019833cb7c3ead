"""Model cards of the published suite (installed as `spectra_hf.cards`): templates/ and their renderer."""

from .render import REVISIONS_FILE, Revision, card_data, eval_results, render_checkpoint_card, render_model_card

__all__ = ["REVISIONS_FILE", "Revision", "card_data", "eval_results", "render_checkpoint_card", "render_model_card"]
