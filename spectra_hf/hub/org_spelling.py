"""An organization named in another case than the one the Hub already holds.

Hub names are case-insensitive (`Spectra-Demo/TriLM_99M` reads the repo `spectra-demo/TriLM_99M`), so publishing
under `--org Spectra-Demo` next to an existing `spectra-demo` would write into that org while the cards, collections
and manifests spell it another way (and a Hub that compared names exactly would make a second copy of the suite).
Publishing refuses it, naming the existing spelling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError

from spectra_hf.errors import ConfigError


def existing_org_spelling(
    api: HfApi, org: str, *, probe_repo: str, call: Callable[[Callable[[], Any]], Any] = lambda f: f()
) -> str | None:
    """The spelling the Hub holds for namespace `org` when it differs from `org` only in case, else None.

    Asks for repo `probe_repo` (`org/<name>`; the Hub answers with its stored id in any case) and for one repo of
    author `org`. `call` runs each request (the publisher's pacer)."""
    try:
        found = call(lambda: api.model_info(probe_repo)).id
    except RepositoryNotFoundError:
        found = None
    if found is None:
        listed = call(lambda: list(api.list_models(author=org, limit=1)))
        found = listed[0].id if listed else None
    namespace = found.partition("/")[0] if found else None
    if namespace is not None and namespace != org and namespace.casefold() == org.casefold():
        return namespace
    return None


def check_org_spelling(api: HfApi, org: str, *, probe_repo: str, call=lambda f: f()) -> None:
    """ConfigError when the Hub holds `org` in another case (see `existing_org_spelling`)."""
    existing = existing_org_spelling(api, org, probe_repo=probe_repo, call=call)
    if existing is not None:
        raise ConfigError(
            f"--org {org} differs only in case from the existing {existing} on {api.endpoint}: Hub names are "
            f"case-insensitive, so this would publish into {existing} under another spelling; nothing was "
            f"published. Pass --org {existing}"
        )
