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
    lfs_threshold: int  # files of at least this many bytes are uploaded through LFS; inline files must be smaller
    tree_page_size: int  # entries per page of a tree listing (the Hub uses 1000)
    upload_secret: bytes  # signs LFS upload URLs, which the client PUTs to without its token
    max_body_bytes: int = 64 * 1024 * 1024  # API request bodies (not LFS PUTs, which are bounded by their size)
    max_file_bytes: int = 50 * 1000**3  # one LFS file
    single_user: bool = True  # no token: every client is `user` and may read and write everything

    def sign_upload(self, sha256: str, size: int, repo: str) -> str:
        """The signature of an LFS upload URL for `sha256` of `size` bytes into `repo` (its url_path)."""
        return hmac.new(self.upload_secret, f"{sha256}:{size}:{repo}".encode(), hashlib.sha256).hexdigest()
