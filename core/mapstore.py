"""Maps on disk: a directory per map holding its manifest, reference features and retrieval state.

Layout of ``<maps_dir>/<name>/`` (format 2)::

    manifest.json           extractor identity, retriever, format version; optionally camera,
                            images_dir (the folder of the reference photos)
    parts/part-*.feat       references (id, x, y) with their default ("coarse") features,
                            one file per build chunk
    sets/<set>/part-*.feat  another named feature set for some references: "fine", the fine
                            stage's (core/finestage.py; extractor in "fine_extractor")
    training.json           optional: what was fitted on the map's own held-out positions
                            (core/heldout.py)
    retrieval/              state fitted by the retriever (codebook, global descriptors, index)

Every ``.feat`` file is a flat array file (``core/flatfile.py``): ids, image sizes, per-reference
offsets into contiguous keypoint / descriptor (float16) / score arrays, and in ``parts/`` the
positions. A loaded map keeps only ids and positions in memory; features are memory-mapped, so a
job reads only the references it shortlists and every worker process on a host shares one copy
in the OS page cache. Parts are written to a temporary file and renamed into place (a crash
never leaves half a part), adding references writes a new part (no rebuild), parallel builders
write separate parts, and rewriting a part of the same name replaces it (idempotent chunks).

Feature sets (the API)::

    ref_map = MapStore(root).open("campus")
    ref_map.features[i]                      # the "coarse" set: Features of reference i
    fine = ref_map.feature_set("fine")       # any named set, lazily read
    fine.has(i); fine[i]                     # KeyError when reference i has none
    append_features(ref_map.path, "fine", [(ref_id, feats), ...])   # fill some references
    fine.refresh()                           # see parts appended since the map was opened

``append_features`` writes one new part of that set; when two parts hold the same reference,
the part opened last wins (parts are opened in name order, then as ``refresh`` finds them).

Format 1 maps (HDF5 parts, ``parts/part-*.h5``) are refused with a pointer to
``upgrade_map`` (``featureloc map upgrade NAME``), which converts them part by part.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from core.camera import Camera
from core.errors import MapError
from core.flatfile import read_arrays, read_rows, write_arrays
from core.geometry import GEOMETRY_DIR, GeometrySet
from core.pairframes import PAIRFRAMES_DIR, PairFrameSet
from core.parts import PART_RE, PART_SUFFIX, PartIndex, part_files, stored_ids
from core.types import Features

FORMAT_VERSION = 2
IMAGES_DIR_KEY = "images_dir"  # manifest key: folder of the reference photos (optional)
FINE_SET = "fine"  # the feature set of the fine stage (core/finestage.py)
FINE_EXTRACTOR_KEY = "fine_extractor"  # manifest key: the extractor of that set
TRAINING_FILE = "training.json"  # what was fitted on held-out positions (core/heldout.py)
DEFAULT_SET = "coarse"
_SET_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


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
            if existing.get("format") != FORMAT_VERSION:
                raise MapError(
                    f"map {name!r} is in format {existing.get('format')}: upgrade it first "
                    f"(`featureloc map upgrade {name}`)"
                )
            if existing["extractor"] != extractor:
                raise MapError(
                    f"map {name!r} was built with extractor {existing['extractor']}, "
                    f"not {extractor}: use another map name"
                )
            return path
        (path / "parts").mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / "manifest.json", json.dumps(manifest, indent=2))
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

    def training(self, name: str) -> dict[str, Any]:
        """The map's training record (core/heldout.py), or {} for a map never fitted."""
        path = self._existing(name) / TRAINING_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def fine_count(self, name: str) -> int:
        """References with features in the map's fine set."""
        return len(existing_reference_ids(self._existing(name), set_name=FINE_SET))

    def geometry_counts(self, name: str) -> dict[str, int]:
        """References with stored pair frames (core/pairframes.py) and with headings and 3D
        points (core/geometry.py), read from the parts' ids without loading the map."""
        path = self._existing(name)
        return {
            "pair_frames": len(stored_ids(path / PAIRFRAMES_DIR)),
            "pose": len(stored_ids(path / GEOMETRY_DIR)),
        }

    def open(self, name: str) -> ReferenceMap:
        return ReferenceMap.load(self._existing(name))

    def set_fine_extractor(self, name: str, identity: dict[str, Any]) -> Path:
        """Record the extractor of the map's fine feature set (core/finestage.py); features
        of another extractor are refused, since they could not be matched together."""
        existing = self.manifest(name).get(FINE_EXTRACTOR_KEY)
        if existing is not None and existing != identity:
            raise MapError(
                f"map {name!r} has fine features from {existing}, not {identity}: remove "
                f"its sets/{FINE_SET} folder and its {FINE_EXTRACTOR_KEY!r} to change them"
            )
        if existing is None:
            self._set_manifest_key(name, FINE_EXTRACTOR_KEY, identity)
        return self.path(name)

    def upgrade(self, name: str) -> int:
        """Convert an old-format map in place (see ``upgrade_map``); returns parts converted."""
        return upgrade_map(self._existing(name))

    def _existing(self, name: str) -> Path:
        path = self.path(name)
        if not (path / "manifest.json").is_file():
            raise MapError(f"unknown map {name!r}")
        return path


def write_training(map_path: Path, record: dict[str, Any]) -> Path:
    """Store a map's training record (core/heldout.py); read back by ReferenceMap.training."""
    path = Path(map_path) / TRAINING_FILE
    atomic_write_text(path, json.dumps(record, indent=2))
    return path


def fine_fitted(training: dict[str, Any], fine_extractor: dict[str, Any] | None) -> bool:
    """Whether a training record fitted the fine stage of a map whose fine set is
    ``fine_extractor``: held-out rows ran the fine stage, with that extractor. Records written
    before fits said so (a fit without a fine set stored ``escalate_below`` 0.0 and an all-zero
    fine curve) count as not fitted when none of their rows ran it."""
    if fine_extractor is None or "escalate_below" not in training:
        return False
    if training.get("heldout", {}).get("fine_run", 0) <= 0:
        return False
    return training.get("fine_extractor", fine_extractor) == fine_extractor


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "manifest.json").read_text())


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(Path(path) / "manifest.json", json.dumps(manifest, indent=2))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def feature_dir(map_path: Path, set_name: str = DEFAULT_SET) -> Path:
    """Where the parts of a feature set live: ``parts/`` for the default set."""
    if set_name == DEFAULT_SET:
        return Path(map_path) / "parts"
    if not _SET_RE.match(set_name or ""):
        raise MapError(f"invalid feature set name {set_name!r}")
    return Path(map_path) / "sets" / set_name


def existing_reference_ids(
    map_path: Path, exclude: Iterable[str] = (), set_name: str = DEFAULT_SET
) -> set[str]:
    """Ids stored in the parts of a feature set of the map (default: the references), except
    in the part files named in ``exclude``."""
    return stored_ids(feature_dir(map_path, set_name), exclude)


def write_part(
    map_path: Path, items: list[tuple[Reference, Features]], name: str | None = None
) -> Path | None:
    """Write one part of references with their default features; None when ``items`` is empty.

    ``name`` (``part-<something>.feat``) makes the write idempotent: writing the same chunk
    again replaces its part instead of adding a second copy of its references.
    """
    if not items:
        return None
    positions = np.array([(r.x, r.y) for r, _ in items], np.float64).reshape(-1, 2)
    return _write_features(
        feature_dir(map_path), [(r.id, f) for r, f in items], name, {"positions": positions}
    )


def append_features(
    map_path: Path,
    set_name: str,
    items: list[tuple[str, Features]],
    name: str | None = None,
) -> Path | None:
    """Store features of some references (by id) in the named set, as one new part."""
    if set_name == DEFAULT_SET:
        raise MapError("the default set holds the references: add them with write_part")
    return _write_features(feature_dir(map_path, set_name), items, name, {})


def _write_features(
    directory: Path, items: list[tuple[str, Features]], name: str | None, extra: dict
) -> Path | None:
    if not items:
        return None
    if name is not None and not PART_RE.fullmatch(name):
        raise MapError(f"invalid part name {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    feats = [f for _, f in items]
    counts = np.array([len(f) for f in feats], np.int64)
    dim = next((f.descriptors.shape[1] for f in feats if f.descriptors.ndim == 2), 0)
    arrays = {
        "ids": np.array([rid for rid, _ in items], dtype=str),
        "sizes": np.array([f.image_size for f in feats], np.int32).reshape(-1, 2),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "keypoints": _stack([f.keypoints for f in feats], (0, 2), np.float32),
        "descriptors": _stack([f.descriptors for f in feats], (0, dim), np.float16),
        "scores": _stack([f.scores for f in feats], (0,), np.float16),
        **extra,
    }
    return write_arrays(directory / (name or f"part-{uuid.uuid4().hex}{PART_SUFFIX}"), arrays)


def _stack(arrays: list[np.ndarray], empty: tuple[int, ...], dtype) -> np.ndarray:
    rows = [np.asarray(a, dtype).reshape(-1, *empty[1:]) for a in arrays]
    return np.concatenate(rows) if rows else np.zeros(empty, dtype)


class FeatureSet(PartIndex):
    """Lazy random access to one feature set of a loaded map: ``[i]`` -> Features.

    Holds the parts' memory maps and, per reference (map order), which part and row hold its
    features (core/parts.py); nothing else is read until a reference is asked for.
    """

    in_memory = ("offsets", "sizes")

    def __init__(self, name: str, directory: Path, index: dict[str, int]) -> None:
        self.name = name
        super().__init__(directory, index)

    def image_sizes(self) -> np.ndarray:
        """(K, 2) width and height of the photo of each reference in this set (from memory)."""
        rows = [part["sizes"][r] for part, r in self.parts_with_rows()]
        return np.concatenate(rows).reshape(-1, 2) if rows else np.empty((0, 2), np.int32)

    def __getitem__(self, i: int) -> Features:
        where = self.locate(i)
        if where is None:
            raise KeyError(f"reference {i} has no {self.name!r} features")
        a, row = where
        lo, hi = int(a["offsets"][row]), int(a["offsets"][row + 1])
        w, h = (int(v) for v in a["sizes"][row])
        # Copies read with pread, not through the mapping (core/flatfile.read_rows): only the
        # reference's bytes enter the process, and no read-only memory reaches the matchers.
        return Features(
            read_rows(a["keypoints"], lo, hi),
            read_rows(a["descriptors"], lo, hi),
            read_rows(a["scores"], lo, hi).astype(np.float32),
            (w, h),
        )

    def __iter__(self) -> Iterator[Features]:
        return (self[i] for i in range(len(self)))


class ReferenceMap:
    """A loaded map: ids and positions in memory, feature sets memory-mapped."""

    def __init__(self, path: Path, manifest: dict[str, Any], ids: list[str], positions) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.ids = ids
        self.positions = positions  # (N, 2) float64
        self.index = {rid: i for i, rid in enumerate(ids)}
        self._sets: dict[str, FeatureSet] = {}

    @property
    def fine_extractor(self) -> dict[str, Any] | None:
        return self.manifest.get(FINE_EXTRACTOR_KEY)

    @cached_property
    def fit(self) -> tuple[dict[str, Any], str | None]:
        """What was fitted on the map's held-out positions (core/heldout.py) and that fit's id
        (a hash of ``training.json``), or ``({}, None)``. Read once per loaded map: a worker
        loads the map again when the fit changes (workers/runtime.py), so a job sees one fit."""
        path = self.path / TRAINING_FILE
        if not path.is_file():
            return {}, None
        data = path.read_bytes()
        return json.loads(data), hashlib.sha256(data).hexdigest()[:16]

    @property
    def training(self) -> dict[str, Any]:
        return self.fit[0]

    @property
    def features(self) -> FeatureSet:
        """The default ("coarse") feature set, the one every reference has."""
        return self.feature_set(DEFAULT_SET)

    def release_pages(self) -> None:
        """Unmap the feature pages this process has read; a worker calls it after each job so
        its resident memory does not grow with the map (core/flatfile.release_pages)."""
        for feature_set in self._sets.values():
            feature_set.release_pages()
        for stored in ("geometry", "pair_frames"):  # the cached properties, once read
            if stored in self.__dict__:
                self.__dict__[stored].release_pages()

    def feature_set(self, name: str = DEFAULT_SET) -> FeatureSet:
        if name not in self._sets:
            self._sets[name] = FeatureSet(name, feature_dir(self.path, name), self.index)
        return self._sets[name]

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
    def geometry(self) -> GeometrySet:
        """The references' headings and 3D points (core/geometry.py); empty until built."""
        return GeometrySet(self.path, self.index)

    @cached_property
    def pair_frames(self) -> PairFrameSet:
        """The stored frames of reference pairs (core/pairframes.py); empty until built."""
        return PairFrameSet(self.path, self.index)

    @cached_property
    def reference_size(self) -> tuple[int, int] | None:
        """The (width, height) most of the map's reference photos were extracted at: the scale
        queries are brought to (core/querysize.py); None for a map with no references."""
        sizes = self.features.image_sizes()
        if not len(sizes):
            return None
        values, counts = np.unique(sizes, axis=0, return_counts=True)
        w, h = values[int(np.argmax(counts))]
        return int(w), int(h)

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
        fmt = manifest.get("format")
        if fmt == 1:
            raise MapError(
                f"map {manifest.get('name')!r} is in format 1 (HDF5 parts): upgrade it once "
                f"with `featureloc map upgrade {manifest.get('name')}`"
            )
        if fmt != FORMAT_VERSION:
            raise MapError(f"map at {path} has format {fmt}, expected {FORMAT_VERSION}")
        positions: dict[str, tuple[float, float]] = {}
        for part in part_files(feature_dir(path)):
            arrays = read_arrays(part)
            for rid, xy in zip(arrays["ids"], arrays["positions"], strict=True):
                positions[str(rid)] = (float(xy[0]), float(xy[1]))
        # Sorted by id so a map's order does not depend on how it was chunked.
        ids = sorted(positions)
        pos = np.array([positions[i] for i in ids], np.float64).reshape(-1, 2)
        return cls(path, manifest, ids, pos)


def upgrade_map(path: Path) -> int:
    """Convert a format 1 map (HDF5 parts) to format 2 in place; returns parts converted.

    Each ``part-X.h5`` becomes ``part-X.feat`` (atomically), then the manifest's format is
    bumped, then the HDF5 files go: a crash at any point leaves a map that loads as format 1
    (and upgrades again) or as format 2.
    """
    import h5py  # only needed to read old maps

    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("format") == FORMAT_VERSION:
        return 0
    if manifest.get("format") != 1:
        raise MapError(f"map at {path} has format {manifest.get('format')}: cannot upgrade")
    old = sorted((path / "parts").glob("part-*.h5"))
    for part in old:
        items = []
        with h5py.File(part, "r") as f:
            for rid, g in f["refs"].items():
                feats = Features(
                    g["keypoints"][()],
                    g["descriptors"][()],
                    g["scores"][()].astype(np.float32),
                    (int(g.attrs["width"]), int(g.attrs["height"])),
                )
                items.append((Reference(rid, float(g.attrs["x"]), float(g.attrs["y"])), feats))
        write_part(path, items, name=part.with_suffix(PART_SUFFIX).name)
    write_manifest(path, {**manifest, "format": FORMAT_VERSION})
    for part in old:
        part.unlink()
    return len(old)
