"""The JSON shapes the Hub uses to describe files and folders of a commit (tree listing, paths-info, siblings)."""

from __future__ import annotations

import hashlib

from .blobs import lfs_pointer
from .errors import entry_not_found
from .store import Commit, FileEntry


def _pointer_size(entry: FileEntry) -> int:
    return len(lfs_pointer(entry.sha256, entry.size))


def file_json(path: str, entry: FileEntry) -> dict:
    """A tree entry for a file, as `RepoFile(**entry)` reads it."""
    data: dict = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
    if entry.lfs:
        data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": _pointer_size(entry)}
    return data


def sibling_json(path: str, entry: FileEntry) -> dict:
    """A `siblings` item of repo info (with `blobs=True`: size, blob id and LFS info)."""
    data: dict = {"rfilename": path, "size": entry.size, "blobId": entry.oid}
    if entry.lfs:
        data["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": _pointer_size(entry)}
    return data


def _folders(tree: dict[str, FileEntry]) -> set[str]:
    folders: set[str] = set()
    for path in tree:
        parts = path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return folders


def _folder_json(path: str, tree: dict[str, FileEntry]) -> dict:
    # A stable id for the folder's content (git's tree hashing is not needed by any client).
    listing = "".join(f"{name}\0{entry.oid}\n" for name, entry in sorted(tree.items()) if name.startswith(path + "/"))
    return {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0, "path": path}


def list_tree(commit: Commit, folder: str, recursive: bool) -> list[dict]:
    """Entries under `folder` ("" = root), sorted by path: direct children, or everything below when recursive."""
    tree = commit.tree
    folders = _folders(tree)
    if folder and folder not in folders:
        raise entry_not_found(folder, commit.oid, f"Folder not found at this revision: {folder}")
    prefix = f"{folder}/" if folder else ""

    def wanted(path: str) -> bool:
        return path.startswith(prefix) and (recursive or "/" not in path[len(prefix):])

    entries = [file_json(path, entry) for path, entry in tree.items() if wanted(path)]
    entries += [_folder_json(path, tree) for path in folders if wanted(path)]
    return sorted(entries, key=lambda entry: entry["path"])


def paths_info(commit: Commit, paths: list[str]) -> list[dict]:
    """Entries for those of `paths` that exist in the commit, files or folders; missing paths are left out."""
    folders = _folders(commit.tree)
    found = []
    for path in paths:
        if path in commit.tree:
            found.append(file_json(path, commit.tree[path]))
        elif path in folders:
            found.append(_folder_json(path, commit.tree))
    return found
