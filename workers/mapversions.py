"""Immutable map versions in S3-compatible object storage, pulled into a local cache per host.

A map's local directory (``core/mapstore.py``) is published as a *version*: every file is
uploaded once under its SHA-256 (``<prefix>/<map>/objects/<sha256>``; an extension re-uploads
nothing but its new parts), then the version manifest ``<prefix>/<map>/versions/<id>.json``
(the map name, the parent version and ``{path: {sha256, size}}`` of every file; the id is a
hash of that file list, so one content is one id), then the pointer ``<prefix>/<map>/LATEST``
(one PUT: atomic). A version never changes after it is written.

A worker host pulls a version into ``<cache>/<map>/<id>/``: files come from the bucket (or are
hard-linked from a cached version holding the same checksum) into a temporary directory, every
checksum is verified, and the directory is renamed into place only when complete. A worker
killed mid-download leaves only a temporary directory, never used and removed later; a map
directory under its version id is always whole. Workers switch to a new version between jobs
(``workers/runtime.py``), and each job records the version it used.

Feature sets filled lazily on a host (``core.mapstore.append_features``) are host-local
additions inside the cached version: outside the manifest, never published.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from core.errors import MapError
from core.mapstore import validate_map_name

VERSION_FILE = ".version.json"  # in a pulled directory: the manifest it was pulled from
_STALE_SECONDS = 3600  # abandoned temporary downloads older than this are removed
_KEEP_VERSIONS = 2  # complete versions kept per map in a host's cache


class MapVersionError(MapError):
    """A version that cannot be used: unknown, or its downloaded bytes fail their checksum."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def map_files(map_dir: Path) -> list[str]:
    """Relative paths of a map's published files (temporary and hidden files left out)."""
    root = Path(map_dir)
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


class MapVersions:
    """Versions of maps in one bucket (any boto3 S3 client: AWS, MinIO, moto's server)."""

    def __init__(self, client, bucket: str, prefix: str = "maps") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, name: str, *parts: str) -> str:
        return "/".join([self.prefix, validate_map_name(name), *parts])

    # --- publishing ---------------------------------------------------------------------------

    def publish(self, map_dir: Path, name: str) -> str:
        """Upload the map directory as a new version and point LATEST at it; returns its id."""
        map_dir = Path(map_dir)
        if not (map_dir / "manifest.json").is_file():
            raise MapError(f"no map at {map_dir}")
        files: dict[str, dict[str, Any]] = {}
        for rel in map_files(map_dir):
            path = map_dir / rel
            files[rel] = {"sha256": file_sha256(path), "size": path.stat().st_size}
        version = hashlib.sha256(
            json.dumps({"map": name, "files": files}, sort_keys=True).encode()
        ).hexdigest()[:24]
        for rel, meta in files.items():
            key = self._key(name, "objects", str(meta["sha256"]))
            if not self._exists(key):
                self.client.upload_file(str(map_dir / rel), self.bucket, key)
        manifest = {
            "map": name,
            "version": version,
            "parent": self.latest(name),
            "created": time.time(),
            "files": files,
        }
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(name, "versions", f"{version}.json"), Body=body
        )
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(name, "LATEST"), Body=version.encode()
        )
        return version

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    # --- reading ------------------------------------------------------------------------------

    def latest(self, name: str) -> str | None:
        """The id LATEST points at; None for a map never published."""
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(name, "LATEST"))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return obj["Body"].read().decode().strip()

    def manifest(self, name: str, version: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        try:
            key = self._key(name, "versions", f"{version}.json")
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise MapVersionError(f"map {name!r} has no version {version!r}") from exc
        return json.loads(obj["Body"].read())

    def pull(self, name: str, version: str, cache_dir: Path) -> Path:
        """The version's complete, verified directory in the host's cache (downloaded once)."""
        base = Path(cache_dir) / validate_map_name(name)
        final = base / version
        if (final / VERSION_FILE).is_file():
            return final
        manifest = self.manifest(name, version)
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".{version}.{uuid.uuid4().hex}.tmp"
        try:
            local = _cached_by_checksum(base)
            for rel, meta in manifest["files"].items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self._fetch(name, meta["sha256"], local.get(meta["sha256"]), target)
            (tmp / VERSION_FILE).write_text(json.dumps(manifest))
            try:
                os.rename(tmp, final)  # atomic: the version appears whole or not at all
            except OSError:
                if not (final / VERSION_FILE).is_file():  # not a concurrent puller's win
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(base, keep=final)
        return final

    def _fetch(self, name: str, sha256: str, cached: Path | None, target: Path) -> None:
        if cached is not None:
            try:
                os.link(cached, target)  # same bytes in an older version: no download
                return
            except OSError:
                pass
        for _attempt in range(2):  # one retry: a transfer cut short is worth one more try
            self.client.download_file(self.bucket, self._key(name, "objects", sha256), str(target))
            if file_sha256(target) == sha256:
                return
        raise MapVersionError(f"map {name!r}: object {sha256} fails its checksum")


def _cached_by_checksum(base: Path) -> dict[str, Path]:
    """Files of the complete cached versions of one map, by checksum (to hard-link)."""
    found: dict[str, Path] = {}
    for version_file in base.glob(f"*/{VERSION_FILE}"):
        try:
            manifest = json.loads(version_file.read_text())
        except (OSError, ValueError):
            continue
        for rel, meta in manifest["files"].items():
            found.setdefault(meta["sha256"], version_file.parent / rel)
    return found


def _prune(base: Path, keep: Path) -> None:
    """Drop abandoned downloads and all but the newest complete versions (workers that still
    map an older version's files keep them alive until they let go)."""
    now = time.time()
    for tmp in base.glob(".*.tmp"):
        if now - tmp.stat().st_mtime > _STALE_SECONDS:
            shutil.rmtree(tmp, ignore_errors=True)
    complete = sorted(
        (d for d in base.iterdir() if (d / VERSION_FILE).is_file() and d != keep),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    for old in complete[_KEEP_VERSIONS - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def make_map_versions(settings) -> MapVersions:
    """The bucket of the settings (``s3_*``), under ``s3_map_prefix``."""
    from workers.blobstore import settings_s3_client

    if not settings.s3_bucket:
        raise ValueError("map_backend is 's3' but s3_bucket is not set")
    return MapVersions(settings_s3_client(settings), settings.s3_bucket, settings.s3_map_prefix)
