"""Content-addressed store for query images: a key is the SHA-256 of the bytes.

Keys are validated hex digests, so nothing a client sends becomes a filesystem path.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

from core.errors import InputError

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(KeyError):
    pass


class InvalidBlobKey(InputError):
    """A key that is not a SHA-256 hex digest (e.g. a path sent by a hostile client)."""


def blob_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            shown = str(key)[:80]
            raise InvalidBlobKey(f"invalid blob key {shown!r}: not a SHA-256 hex digest")
        return self.root / key[:2] / key

    def put(self, data: bytes) -> str:
        key = blob_key(data)
        path = self._path(key)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: readers never see a partial blob
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()
