"""Content-addressed store for query images: a key is the SHA-256 of the bytes.

Keys are validated hex digests, so nothing a client sends becomes a filesystem path (or an S3
object name). Two backends behind one interface (put/get/exists/delete): a local directory and an
S3-compatible bucket (:class:`DirectoryBlobStore`, :class:`S3BlobStore`, both a
:class:`BlobStore`); ``make_blob_store(settings)`` picks one.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import InputError

if TYPE_CHECKING:
    from pydantic import SecretStr

    from workers.settings import Settings

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(KeyError):
    pass


class InvalidBlobKey(InputError):
    """A key that is not a SHA-256 hex digest (e.g. a path sent by a hostile client)."""


def blob_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        shown = str(key)[:80]
        raise InvalidBlobKey(f"invalid blob key {shown!r}: not a SHA-256 hex digest")
    return key


class BlobStore(Protocol):
    """What the client and the workers need of a blob store."""

    def put(self, data: bytes) -> str:
        """Store ``data`` (a no-op when present); returns its key."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises BlobNotFound when absent, InvalidBlobKey when ``key``
        is not a SHA-256 hex digest."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the blob under ``key`` (a no-op when absent): a refused submission's photo."""
        ...


class DirectoryBlobStore:
    """Blobs as files under ``root/<key[:2]>/<key>``, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        validate_key(key)
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

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def s3_client(
    endpoint_url: str | None,
    region: str,
    access_key_id: SecretStr | None,
    secret_access_key: SecretStr | None,
):
    """A boto3 S3 client; credentials left as None fall back to boto3's own chain."""
    import boto3  # optional dependency: only a deployment that uses S3 needs it

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id.get_secret_value() if access_key_id else None,
        aws_secret_access_key=(secret_access_key.get_secret_value() if secret_access_key else None),
    )


def settings_s3_client(settings: Settings):
    """The S3 client the settings describe (bucket aside)."""
    return s3_client(
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_access_key_id,
        settings.s3_secret_access_key,
    )


class S3BlobStore:
    """The same store in an S3-compatible bucket (AWS, MinIO, Ceph...): needs the ``s3`` extra.

    Objects live at ``<prefix>/<key[:2]>/<key>``, as in the directory store. Credentials left
    as None fall back to boto3's own chain (environment, instance role).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "blobs",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: SecretStr | None = None,
        secret_access_key: SecretStr | None = None,
    ) -> None:
        from botocore.exceptions import ClientError

        self._client_error = ClientError
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = s3_client(endpoint_url, region, access_key_id, secret_access_key)

    def _object_name(self, key: str) -> str:
        validate_key(key)
        name = f"{key[:2]}/{key}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _is_missing(self, exc: Any) -> bool:  # a botocore ClientError
        code = exc.response.get("Error", {}).get("Code", "")
        return code in {"404", "NoSuchKey", "NotFound"}

    def put(self, data: bytes) -> str:
        key = blob_key(data)
        if not self.exists(key):  # content-addressed: an existing object already holds these bytes
            self.client.put_object(Bucket=self.bucket, Key=self._object_name(key), Body=data)
        return key

    def get(self, key: str) -> bytes:
        name = self._object_name(key)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=name)["Body"].read()
        except self._client_error as exc:
            if self._is_missing(exc):
                raise BlobNotFound(key) from None
            raise

    def exists(self, key: str) -> bool:
        name = self._object_name(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
        except self._client_error as exc:
            if self._is_missing(exc):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object_name(key))


def make_blob_store(settings: Settings) -> BlobStore:
    """The blob store the settings name (``blob_backend``)."""
    if settings.blob_backend == "s3":
        if not settings.s3_bucket:
            raise ValueError("blob_backend is 's3' but s3_bucket is not set")
        return S3BlobStore(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )
    return DirectoryBlobStore(settings.blob_dir)
