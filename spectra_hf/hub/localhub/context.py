"""What every request handler of the local Hub can reach: storage, counters and the server's settings."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from .collection_store import CollectionStore
from .stats import Stats
from .store import RepoStore


@dataclass
class HubContext:
    store: RepoStore
    collections: CollectionStore
    stats: Stats
    user: str  # the name whoami reports (and the default namespace of collections)
    lfs_threshold: int  # files of at least this many bytes are uploaded through LFS
    tree_page_size: int  # entries per page of a tree listing (the Hub uses 1000)
    upload_secret: bytes  # signs LFS upload URLs, which the client PUTs to without its token

    def sign_upload(self, sha256: str, size: int) -> str:
        return hmac.new(self.upload_secret, f"{sha256}:{size}".encode(), hashlib.sha256).hexdigest()
