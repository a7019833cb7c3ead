"""Repos, commits and refs of the local Hub, on disk under one root directory.

Layout (everything survives a restart; a new server on the same root sees it all):

    root/blobs/sha256/ab/cdef...            file contents, content-addressed (see blobs.py)
    root/repos/models/org/name/repo.json     creation metadata
    root/repos/models/org/name/refs.json     {"branches": {name: oid}, "tags": {name: oid}}, replaced atomically
    root/repos/models/org/name/commits/<oid>.json   immutable snapshots: parents, message, date, tree
    (datasets under root/repos/datasets/...)

A commit's tree maps every file path to its blob, so reading a revision is one JSON file. One lock serializes
ref updates; a root is meant to be served by one server process at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from huggingface_hub.utils.sha import git_hash

from .blobs import BlobStore, lfs_pointer
from .errors import ErrorResponse, bad_request, entry_not_found, repo_not_found, revision_not_found
from .files import read_json, write_json_atomic
from .names import URL_PREFIXES, RepoRef, check_ref_name, check_revision, is_commit_oid

DEFAULT_BRANCH = "main"
_REF_KEYS = {"branch": "branches", "tag": "tags"}  # ref kind -> key in refs.json

# What the Hub commits as the first file of every new repo: these patterns go through LFS.
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle",
        "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite",
        "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit: its blob (sha256, size), its git oid, and whether git holds it as an LFS pointer."""

    sha256: str
    size: int
    oid: str
    lfs: bool

    @classmethod
    def regular(cls, sha256: str, data: bytes) -> FileEntry:
        return cls(sha256, len(data), git_hash(data), False)

    @classmethod
    def large(cls, sha256: str, size: int) -> FileEntry:
        return cls(sha256, size, git_hash(lfs_pointer(sha256, size)), True)


@dataclass(frozen=True)
class Commit:
    oid: str
    parents: tuple[str, ...]
    title: str
    message: str
    date: str
    tree: dict[str, FileEntry]

    def to_json(self) -> dict:
        return {**asdict(self), "parents": list(self.parents)}

    @classmethod
    def from_json(cls, data: dict) -> Commit:
        tree = {path: FileEntry(**entry) for path, entry in data["tree"].items()}
        return cls(data["oid"], tuple(data["parents"]), data["title"], data["message"], data["date"], tree)


@dataclass(frozen=True)
class AddFile:
    path: str
    entry: FileEntry


@dataclass(frozen=True)
class DeletePath:
    path: str
    folder: bool


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _new_commit(parents: tuple[str, ...], tree: dict[str, FileEntry], title: str, message: str) -> Commit:
    date = _now()
    tree_json = json.dumps({path: asdict(entry) for path, entry in sorted(tree.items())}, sort_keys=True)
    header = json.dumps([list(parents), hashlib.sha1(tree_json.encode()).hexdigest(), title, message, date])
    return Commit(hashlib.sha1(header.encode()).hexdigest(), parents, title, message, date, tree)


def _apply(tree: dict[str, FileEntry], operation: AddFile | DeletePath, commit: str) -> None:
    path = operation.path
    if isinstance(operation, AddFile):
        parts = path.split("/")
        folders = ("/".join(parts[:i]) for i in range(1, len(parts)))
        clash = next((folder for folder in folders if folder in tree), None)
        if clash is None and any(other.startswith(path + "/") for other in tree):
            clash = path
        if clash is not None:
            raise bad_request(f"Cannot add {path!r}: {clash!r} would be both a file and a folder.")
        tree[path] = operation.entry
    elif operation.folder:
        inside = [other for other in tree if other.startswith(path + "/")]
        if not inside:
            raise entry_not_found(path, commit, f"A folder with this name doesn't exist: {path}")
        for other in inside:
            del tree[other]
    elif tree.pop(path, None) is None:
        raise entry_not_found(path, commit, f"A file with this name doesn't exist: {path}")


class RepoStore:
    """Create, read and update repos under `root`; all methods raise ErrorResponse for what a client got wrong."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = BlobStore(self.root / "blobs")
        self._repos = self.root / "repos"
        self._repos.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._load_commit = lru_cache(maxsize=1024)(self._read_commit)
        self._lfs_objects: dict[RepoRef, set[str]] = {}

    # -- repos ---------------------------------------------------------------------------------------------
    # Names compare case-insensitively, as on the Hub: `Spectra/Model1` reads and writes the stored
    # `spectra/model1`, and creating it again answers 409. Folders keep the spelling a repo (and the first repo of a
    # namespace) was created with, so stores written before keep their layout; where such a store holds two
    # spellings of one name, the exact spelling is found first.
    def _stored_namespace(self, namespace: str) -> str:
        folders = [self._repos / f"{repo_type}s" for repo_type in URL_PREFIXES]
        if any((folder / namespace).is_dir() for folder in folders):
            return namespace
        folded = namespace.casefold()
        for folder in folders:
            if folder.is_dir():
                match = sorted(child.name for child in folder.iterdir() if child.name.casefold() == folded)
                if match:
                    return match[0]
        return namespace

    def canonical(self, repo: RepoRef) -> RepoRef:
        """`repo` spelled as stored (see above); as given when no repo of that name exists in any case."""
        namespace = self._stored_namespace(repo.namespace)
        folder = self._repos / f"{repo.type}s" / namespace
        name = repo.name
        if not (folder / name / "refs.json").is_file() and folder.is_dir():
            folded = name.casefold()
            match = sorted(
                child.name for child in folder.iterdir()
                if child.name.casefold() == folded and (child / "refs.json").is_file()
            )
            name = match[0] if match else name
        return RepoRef(repo.type, namespace, name)

    def _dir(self, repo: RepoRef) -> Path:
        stored = self.canonical(repo)
        return self._repos / f"{stored.type}s" / stored.namespace / stored.name

    def exists(self, repo: RepoRef) -> bool:
        return (self._dir(repo) / "refs.json").is_file()

    def require(self, repo: RepoRef) -> None:
        if not self.exists(repo):
            raise repo_not_found(repo.id)

    def create_repo(self, repo: RepoRef, private: bool) -> bool:
        """Create the repo with `main` at an initial commit holding .gitattributes; False if it already exists (in
        any case: see `canonical`). A new repo of an existing namespace takes that namespace's stored spelling."""
        with self._lock:
            if self.exists(repo):
                return False
            repo = self.canonical(repo)
            data = GITATTRIBUTES.encode()
            entry = FileEntry.regular(self.blobs.put([data]), data)
            commit = _new_commit((), {".gitattributes": entry}, "initial commit", "")
            # Build the repo in a scratch folder and rename it into place: a crash leaves no half repo behind.
            scratch = Path(tempfile.mkdtemp(dir=self._repos, prefix=".new-"))
            write_json_atomic(scratch / "commits" / f"{commit.oid}.json", commit.to_json())
            meta = {"id": repo.id, "type": repo.type, "private": private, "createdAt": commit.date,
                    "_id": hashlib.sha1(f"{repo.url_path}@{commit.date}".encode()).hexdigest()[:24]}
            write_json_atomic(scratch / "repo.json", meta)
            write_json_atomic(scratch / "refs.json", {"branches": {DEFAULT_BRANCH: commit.oid}, "tags": {}})
            target = self._dir(repo)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)  # a leftover without refs.json is not a repo
            os.rename(scratch, target)
            return True

    def delete_repo(self, repo: RepoRef) -> None:
        with self._lock:
            self.require(repo)
            trash = Path(tempfile.mkdtemp(dir=self._repos, prefix=".deleted-"))
            stored = self.canonical(repo)
            os.replace(self._dir(repo), trash / "repo")
            shutil.rmtree(trash)
            self._load_commit.cache_clear()
            self._lfs_objects.pop(stored, None)

    def metadata(self, repo: RepoRef) -> dict:
        return read_json(self._dir(repo) / "repo.json")

    def update_metadata(self, repo: RepoRef, **changes: object) -> dict:
        with self._lock:
            self.require(repo)
            meta = {**self.metadata(repo), **changes}
            write_json_atomic(self._dir(repo) / "repo.json", meta)
            return meta

    def repos(self) -> Iterator[RepoRef]:
        """Every repo stored, models then datasets, sorted by id."""
        for repo_type in ("model", "dataset"):
            base = self._repos / f"{repo_type}s"
            for refs_file in sorted(base.glob("*/*/refs.json")):
                yield RepoRef(repo_type, refs_file.parent.parent.name, refs_file.parent.name)

    def move_repo(self, source: RepoRef, target: RepoRef) -> None:
        """Rename `source` to `target` (same type); 409 if the target exists."""
        with self._lock:
            self.require(source)
            source = self.canonical(source)
            if self.exists(target):
                raise ErrorResponse(409, f"Cannot move {source.id} to {target.id}: that repo already exists.")
            target = self.canonical(target)
            self._dir(target).parent.mkdir(parents=True, exist_ok=True)
            os.rename(self._dir(source), self._dir(target))
            meta = {**self.metadata(target), "id": target.id}
            write_json_atomic(self._dir(target) / "repo.json", meta)
            self._load_commit.cache_clear()
            self._lfs_objects.pop(source, None)

    # -- LFS objects of a repo -----------------------------------------------------------------------------
    # Blobs are stored once for all repos, but a commit may only name an LFS object that was uploaded to its own
    # repo (or is already in it): knowing a sha256 must not be a way to copy another repo's file.
    def _linked(self, repo: RepoRef) -> set[str]:
        repo = self.canonical(repo)
        linked = self._lfs_objects.get(repo)
        if linked is None:
            listing = self._dir(repo) / "lfs-objects.txt"
            linked = set(listing.read_text(encoding="ascii").split()) if listing.is_file() else set()
            refs = self.refs(repo)
            for oid in {*refs["branches"].values(), *refs["tags"].values()}:
                linked.update(entry.sha256 for entry in self.commit(repo, oid).tree.values() if entry.lfs)
            self._lfs_objects[repo] = linked
        return linked

    def has_lfs_object(self, repo: RepoRef, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._linked(repo)

    def link_lfs_object(self, repo: RepoRef, sha256: str) -> None:
        """Record that `sha256` was uploaded to `repo` (append-only list beside refs.json)."""
        with self._lock:
            linked = self._linked(repo)
            if sha256 in linked:
                return
            with open(self._dir(repo) / "lfs-objects.txt", "a", encoding="ascii") as handle:
                handle.write(sha256 + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            linked.add(sha256)

    # -- refs ----------------------------------------------------------------------------------------------
    def refs(self, repo: RepoRef) -> dict[str, dict[str, str]]:
        """{"branches": {name: oid}, "tags": {name: oid}}."""
        self.require(repo)
        return read_json(self._dir(repo) / "refs.json")

    def _write_refs(self, repo: RepoRef, refs: dict) -> None:
        write_json_atomic(self._dir(repo) / "refs.json", refs)

    def resolve(self, repo: RepoRef, revision: str) -> Commit:
        """The commit a branch, tag or commit id points at (branches win over tags, as on the Hub)."""
        refs = self.refs(repo)
        check_revision(revision)
        oid = refs["branches"].get(revision) or refs["tags"].get(revision)
        if oid is None and is_commit_oid(revision) and (self._dir(repo) / "commits" / f"{revision}.json").is_file():
            oid = revision
        if oid is None:
            raise revision_not_found(revision)
        return self.commit(repo, oid)

    def create_ref(self, repo: RepoRef, kind: str, name: str, revision: str | None) -> None:
        """A new branch or tag (`kind`) at `revision` (default: main); 409 if one of that name exists."""
        check_ref_name(name, kind)
        with self._lock:
            target = self.resolve(repo, revision or DEFAULT_BRANCH)
            refs = self.refs(repo)
            if name in refs[_REF_KEYS[kind]]:
                raise ErrorResponse(409, f"Reference already exists: {kind} {name!r}.")
            refs[_REF_KEYS[kind]][name] = target.oid
            self._write_refs(repo, refs)

    def delete_ref(self, repo: RepoRef, kind: str, name: str) -> None:
        """Delete a branch or tag (`kind`); the default branch stays."""
        if kind == "branch" and name == DEFAULT_BRANCH:
            raise bad_request(f"Cannot delete the default branch {DEFAULT_BRANCH!r}.")
        with self._lock:
            refs = self.refs(repo)
            if refs[_REF_KEYS[kind]].pop(name, None) is None:
                raise revision_not_found(name)
            self._write_refs(repo, refs)

    # -- commits -------------------------------------------------------------------------------------------
    def _read_commit(self, path: Path) -> Commit:
        return Commit.from_json(read_json(path))

    def commit(self, repo: RepoRef, oid: str) -> Commit:
        return self._load_commit(self._dir(repo) / "commits" / f"{oid}.json")

    def history(self, repo: RepoRef, head: Commit) -> Iterator[Commit]:
        """`head` and its first-parent ancestors, newest first."""
        commit: Commit | None = head
        while commit is not None:
            yield commit
            commit = self.commit(repo, commit.parents[0]) if commit.parents else None

    def create_commit(
        self,
        repo: RepoRef,
        branch: str,
        operations: Iterable[AddFile | DeletePath],
        title: str,
        message: str,
        parent: str | None = None,
        new_blobs: dict[str, bytes] | None = None,
    ) -> Commit:
        """Apply `operations` on top of `branch` and move the branch; `parent` (a full or short commit id) must be
        its head.

        `new_blobs` (sha256 -> bytes: the inline files of the commit) are stored only once the commit is known to
        apply, so a refused commit leaves no blob behind.
        """
        with self._lock:
            refs = self.refs(repo)
            head_oid = refs["branches"].get(check_ref_name(branch, "branch"))
            if head_oid is None:
                if branch in refs["tags"] or is_commit_oid(branch):
                    raise bad_request(f"Can only commit to a branch, and {branch!r} is not one.")
                raise revision_not_found(branch)
            if parent is not None and not head_oid.startswith(parent.lower()):
                raise ErrorResponse(
                    412, f"A commit has happened since {parent} on branch {branch!r}: refresh and try again."
                )
            tree = dict(self.commit(repo, head_oid).tree)
            for operation in operations:
                _apply(tree, operation, head_oid)
            for sha256, data in (new_blobs or {}).items():
                self.blobs.put_bytes(data, sha256)
            commit = _new_commit((head_oid,), tree, title, message)
            write_json_atomic(self._dir(repo) / "commits" / f"{commit.oid}.json", commit.to_json())
            refs["branches"][branch] = commit.oid
            self._write_refs(repo, refs)
            return commit

    def squash(self, repo: RepoRef, branch: str, message: str) -> Commit:
        """Replace `branch`'s history by one root commit holding its current files (huggingface_hub's
        super_squash_history); other branches and tags keep their commits."""
        with self._lock:
            head = self.resolve(repo, check_ref_name(branch, "branch"))
            refs = self.refs(repo)
            if branch not in refs["branches"]:
                raise bad_request(f"Can only squash a branch, and {branch!r} is not one.")
            title, _, body = message.partition("\n")
            commit = _new_commit((), dict(head.tree), title, body.strip())
            write_json_atomic(self._dir(repo) / "commits" / f"{commit.oid}.json", commit.to_json())
            refs["branches"][branch] = commit.oid
            self._write_refs(repo, refs)
            return commit
