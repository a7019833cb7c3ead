"""Model cards of re-published release revisions: the cards spectra-hf renders for every suite repo, plus where the
weights came from (release repo, revision, commit), the conversion applied and the checks it passed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spectra_hf.cards import Revision, render_checkpoint_card, render_model_card
from spectra_hf.release.conversion import Conversion
from spectra_hf.release.discovery import ReleaseRevision


def provenance_section(revision: ReleaseRevision, conversion: Conversion) -> str:
    lines = [
        "",
        "## Provenance",
        "",
        f"Converted by `spectra-hf release publish` from the public release: [`{revision.source_repo}`]"
        f"(/{revision.source_repo}/tree/{revision.source_revision}) revision `{revision.source_revision}`"
        + (f" (commit `{revision.source_commit}`)." if revision.source_commit else "."),
        "",
        f"Conversion: {conversion.conversion}.",
        "",
        "Verified before publishing:",
        "",
        *(f"- {check}" for check in conversion.checks),
    ]
    if conversion.warnings:
        lines += ["", "Warnings:", "", *(f"- {warning}" for warning in conversion.warnings)]
    return "\n".join(lines) + "\n"


def revision_card(
    revision: ReleaseRevision,
    conversion: Conversion,
    *,
    org: str,
    config: dict[str, Any],
    revisions: Sequence[Revision],
    has_tokenizer: bool,
) -> str:
    """README.md of the branch a release revision becomes: the suite card (main) or checkpoint card, plus provenance."""
    if revision.step is None:
        card = render_model_card(
            model=revision.model, org=org, config=config, revisions=revisions, has_tokenizer=has_tokenizer
        )
    else:
        current = Revision(branch=revision.branch, step=revision.step, tokens_seen=revision.tokens_seen)
        card = render_checkpoint_card(model=revision.model, org=org, revision=current)
    return card.rstrip("\n") + "\n" + provenance_section(revision, conversion)
