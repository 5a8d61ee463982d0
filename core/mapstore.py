"""Maps on disk: a directory per map holding its manifest and its reference features.

Layout of ``<maps_dir>/<name>/``::

    manifest.json        extractor identity, format version; optionally camera, images_dir
    parts/part-*.h5      reference features and positions, one file per build chunk
    retrieval/           state fitted by the retriever (codebooks, global descriptors)

A part is written to a temporary file and renamed into place, so a crash never leaves a
half-written part; adding images later writes a new part (no rebuild), and parallel builders
write separate parts.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from core.camera import Camera
from core.errors import MapError
from core.types import Features

FORMAT_VERSION = 1
IMAGES_DIR_KEY = "images_dir"  # manifest key: folder of the reference photos (optional)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_map_name(name: str) -> str:
    if not _NAME_RE.match(name or "") or ".." in name:
        raise MapError(
            f"invalid map name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Reference:
    id: str
    x: float
    y: float


class MapStore:
    """The collection of maps under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / validate_map_name(name)

    def exists(self, name: str) -> bool:
        return (self.path(name) / "manifest.json").is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "manifest.json").is_file())

    def create(self, name: str, extractor: dict[str, Any], retriever: dict[str, Any]) -> Path:
        """Create an empty map, or check that an existing one was built the same way."""
        path = self.path(name)
        manifest = {
            "name": name,
            "format": FORMAT_VERSION,
            "extractor": extractor,
            "retriever": retriever,
        }
        if (path / "manifest.json").is_file():
            existing = read_manifest(path)
            if existing["extractor"] != extractor:
                raise MapError(
                    f"map {name!r} was built with extractor {existing['extractor']}, "
                    f"not {extractor}: use another map name"
                )
            return path
        (path / "parts").mkdir(parents=True, exist_ok=True)
        _atomic_write_text(path / "manifest.json", json.dumps(manifest, indent=2))
        return path

    def set_camera(self, name: str, camera: Camera | None) -> None:
        """Record (or with None, forget) the camera of a map's references; no rebuild needed."""
        self._set_manifest_key(
            name, "camera", None if camera is None else camera.model_dump(exclude_none=True)
        )

    def set_images_dir(self, name: str, images_dir: Path | None) -> None:
        """Record (or with None, forget) the folder of the map's reference photos.

        A map keeps features, not photos; figures that show references (``featureloc draw``, the
        HTTP API's ``matches.png`` and job page) read them from this folder (file stem = id).
        """
        value = None if images_dir is None else str(Path(images_dir).resolve())
        self._set_manifest_key(name, IMAGES_DIR_KEY, value)

    def images_dir(self, name: str) -> Path | None:
        """The recorded folder of the map's reference photos, if any."""
        value = self.manifest(name).get(IMAGES_DIR_KEY)
        return Path(value) if value else None

    def manifest(self, name: str) -> dict[str, Any]:
        """The map's manifest (extractor, retriever, camera...), without loading its features."""
        return read_manifest(self._existing(name))

    def _set_manifest_key(self, name: str, key: str, value: Any) -> None:
        path = self._existing(name)
        manifest = read_manifest(path)
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
        write_manifest(path, manifest)

    def open(self, name: str) -> ReferenceMap:
        return ReferenceMap.load(self._existing(name))

    def _existing(self, name: str) -> Path:
        path = self.path(name)
        if not (path / "manifest.json").is_file():
            raise MapError(f"unknown map {name!r}")
        return path


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "manifest.json").read_text())


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    _atomic_write_text(Path(path) / "manifest.json", json.dumps(manifest, indent=2))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def existing_reference_ids(map_path: Path, exclude: Iterable[str] = ()) -> set[str]:
    """Ids stored in the map's parts, except in the part files named in ``exclude``."""
    ids: set[str] = set()
    skip = set(exclude)
    for part in sorted((Path(map_path) / "parts").glob("part-*.h5")):
        if part.name in skip:
            continue
        with h5py.File(part, "r") as f:
            ids.update(f["refs"].keys())
    return ids


def write_part(
    map_path: Path, items: list[tuple[Reference, Features]], name: str | None = None
) -> Path | None:
    """Write one part atomically; returns its path (None when there is nothing to write).

    ``name`` (``part-<something>.h5``) makes the write idempotent: writing the same chunk again
    replaces its part instead of adding a second copy of its references.
    """
    if not items:
        return None
    parts = Path(map_path) / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    if name is not None and not re.fullmatch(r"part-[A-Za-z0-9_-]+\.h5", name):
        raise MapError(f"invalid part name {name!r}")
    final = parts / (name or f"part-{uuid.uuid4().hex}.h5")
    tmp = parts / f".{final.name}.{uuid.uuid4().hex}.tmp"  # concurrent writers of one name
    with h5py.File(tmp, "w") as f:
        refs = f.create_group("refs")
        for ref, feats in items:
            g = refs.create_group(ref.id)
            g.attrs["x"] = float(ref.x)
            g.attrs["y"] = float(ref.y)
            g.attrs["width"], g.attrs["height"] = feats.image_size
            g.create_dataset("keypoints", data=feats.keypoints.astype(np.float32))
            g.create_dataset("descriptors", data=feats.descriptors.astype(np.float16))
            g.create_dataset("scores", data=feats.scores.astype(np.float16))
    os.replace(tmp, final)
    return final


class ReferenceMap:
    """A map loaded in memory: positions and features of every reference."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        ids: list[str],
        positions: np.ndarray,
        features: list[Features],
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.ids = ids
        self.positions = positions  # (N, 2) float64
        self.features = features
        self.index = {rid: i for i, rid in enumerate(ids)}

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def extractor(self) -> dict[str, Any]:
        return self.manifest["extractor"]

    @property
    def retriever(self) -> dict[str, Any]:
        return self.manifest.get("retriever", {"name": "exhaustive", "conf": {}})

    @property
    def retrieval_dir(self) -> Path:
        return self.path / "retrieval"

    @cached_property
    def camera(self) -> Camera | None:
        """The references' camera intrinsics, when the map records them. Parsed once: the
        localiser reads it on every query, and a changed manifest means a reloaded map."""
        cam = self.manifest.get("camera")
        return Camera.model_validate(cam) if cam else None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def load(cls, path: Path) -> ReferenceMap:
        manifest = read_manifest(path)
        if manifest.get("format") != FORMAT_VERSION:
            raise MapError(f"map at {path} has format {manifest.get('format')}, expected 1")
        ids: list[str] = []
        pos: list[tuple[float, float]] = []
        feats: list[Features] = []
        for part in sorted((Path(path) / "parts").glob("part-*.h5")):
            with h5py.File(part, "r") as f:
                for rid, g in f["refs"].items():
                    ids.append(rid)
                    pos.append((float(g.attrs["x"]), float(g.attrs["y"])))
                    feats.append(
                        Features(
                            g["keypoints"][()],
                            g["descriptors"][()],  # float16: half the memory, resident
                            g["scores"][()].astype(np.float32),
                            (int(g.attrs["width"]), int(g.attrs["height"])),
                        )
                    )
        # Sort by id so a map's order does not depend on how it was chunked.
        order = sorted(range(len(ids)), key=ids.__getitem__)
        return cls(
            path,
            manifest,
            [ids[i] for i in order],
            np.array([pos[i] for i in order], np.float64).reshape(-1, 2),
            [feats[i] for i in order],
        )
