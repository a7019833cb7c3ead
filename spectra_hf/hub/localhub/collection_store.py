"""Hub collections on disk: one JSON file per collection under `root/collections/<namespace>/`.

Slugs look like the Hub's, `namespace/title-words-<24 hex>`. A second collection with the same title in the same
namespace is refused with 409 carrying the existing slug, which is what `create_collection(exists_ok=True)` needs.
"""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ErrorResponse
from .files import read_json, write_json_atomic
from .names import check_namespace

_SLUG_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*-[0-9a-f]{24}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _object_id(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:24]


class CollectionStore:
    def __init__(self, root: Path):
        self._root = Path(root) / "collections"
        self._lock = threading.Lock()

    def _file(self, slug: str) -> Path:
        namespace, _, name = slug.partition("/")
        if not _SLUG_NAME.fullmatch(name):
            raise ErrorResponse(404, f"Collection {slug!r} not found.")
        check_namespace(namespace)
        return self._root / namespace / f"{name}.json"

    def get(self, slug: str) -> dict:
        path = self._file(slug)
        if not path.is_file():
            raise ErrorResponse(404, f"Collection {slug!r} not found.")
        return read_json(path)

    def list(self, owner: str | None = None, item: str | None = None) -> list[dict]:
        """Collections of `owner` (a namespace) and/or holding `item` ("models/org/name"), newest first."""
        found = [read_json(path) for path in self._root.glob("*/*.json")]
        if owner:
            found = [c for c in found if c["owner"]["name"] == owner]
        if item:
            found = [c for c in found if any(f"{i['type']}s/{i['id']}" == item for i in c["items"])]
        return sorted(found, key=lambda c: c["lastUpdated"], reverse=True)

    def create(self, namespace: str, title: str, description: str | None, private: bool) -> dict:
        check_namespace(namespace)
        if not title.strip():
            raise ErrorResponse(400, "A collection needs a non-empty title.")
        with self._lock:
            for existing in self.list(owner=namespace):
                if existing["title"] == title:
                    raise ErrorResponse(409, f"Collection {title!r} already exists.", extra={"slug": existing["slug"]})
            words = "-".join(re.findall(r"[a-z0-9]+", title.lower())) or "collection"
            slug = f"{namespace}/{words}-{_object_id(namespace, title, _now())}"
            collection: dict[str, Any] = {
                "slug": slug, "title": title, "description": description, "private": private,
                "owner": {"name": namespace, "type": "user"}, "items": [], "lastUpdated": _now(),
                "position": 0, "theme": "default", "upvotes": 0,
            }
            write_json_atomic(self._file(slug), collection)
            return collection

    def add_item(self, slug: str, item_id: str, item_type: str, note: str | None) -> dict:
        with self._lock:
            collection = self.get(slug)
            if any(item["id"] == item_id and item["type"] == item_type for item in collection["items"]):
                raise ErrorResponse(409, f"{item_type} {item_id!r} is already in collection {slug!r}.")
            item = {"_id": _object_id(slug, item_type, item_id), "id": item_id, "type": item_type,
                    "position": len(collection["items"])}
            if note is not None:
                item["note"] = {"text": note, "html": note}
            collection["items"].append(item)
            collection["lastUpdated"] = _now()
            write_json_atomic(self._file(slug), collection)
            return collection

    def delete_item(self, slug: str, item_object_id: str) -> None:
        with self._lock:
            collection = self.get(slug)
            items = [item for item in collection["items"] if item["_id"] != item_object_id]
            if len(items) == len(collection["items"]):
                raise ErrorResponse(404, f"Item {item_object_id!r} not found in collection {slug!r}.")
            collection["items"] = [{**item, "position": i} for i, item in enumerate(items)]
            collection["lastUpdated"] = _now()
            write_json_atomic(self._file(slug), collection)

    def delete(self, slug: str) -> None:
        with self._lock:
            path = self._file(slug)
            if not path.is_file():
                raise ErrorResponse(404, f"Collection {slug!r} not found.")
            path.unlink()
