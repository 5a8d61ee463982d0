"""What a worker process keeps between tasks: settings, the database, and loaded maps.

Models and map features load once per process (lazily, on the first task, so nothing touches
CUDA in the parent before prefork forks); a map is reloaded when its version changes: its parts
on disk (``map_backend=dir``) or the version published to object storage (``s3``). A CPU worker
may instead load named maps in its main process before the pool forks (``preload``).
"""

from __future__ import annotations

import gc
import glob
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

from core.errors import ImageError, MapError
from core.geometry import GEOMETRY_DIR
from core.localiser import Localiser
from core.mapstore import (
    IMAGES_DIR_KEY,
    TRAINING_FILE,
    MapStore,
    ReferenceMap,
    part_files,
    validate_map_name,
)
from core.pairframes import PAIRFRAMES_DIR
from core.threads import limit_threads
from db.session import Database
from workers.blobstore import BlobStore, make_blob_store
from workers.mapversions import MapVersions, make_map_versions
from workers.settings import Settings, get_settings

log = logging.getLogger(__name__)

_localisers: dict[str, tuple[str, Localiser]] = {}


@lru_cache(maxsize=1)
def settings() -> Settings:
    s = get_settings()
    limit_threads(s.torch_threads)
    return s


@lru_cache(maxsize=1)
def database() -> Database:
    return Database(settings().database_url.get_secret_value())


@lru_cache(maxsize=1)
def blob_store() -> BlobStore:
    # Per process, created after the fork: an S3 client keeps its connections between tasks.
    return make_blob_store(settings())


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _local_version(path: Path) -> str:
    """A directory map's version: changes whenever a part, a geometry or pair-frame part or
    the retrieval state is added or replaced, or the manifest (a new fine set) or the fit
    (``training.json``) changes.

    ``local-`` + a hash of names, modification times and inodes (every file is replaced by a
    rename, so a new one has a new inode even within the clock's resolution). The fine set's
    parts are left out: they only add features, which a loaded map reads when it lacks them
    (core/mapstore.FeatureSet.refresh), and workers add some themselves.
    """
    files = part_files(path / "parts") + part_files(path / GEOMETRY_DIR)
    files += part_files(path / PAIRFRAMES_DIR)
    files += sorted(path.glob("retrieval/*"))
    files += [path / "manifest.json"] + [f for f in [path / TRAINING_FILE] if f.is_file()]
    stamp = [(f.name, f.stat().st_mtime_ns, f.stat().st_ino) for f in files]
    return "local-" + hashlib.sha256(repr(stamp).encode()).hexdigest()[:20]


@lru_cache(maxsize=1)
def map_versions() -> MapVersions:
    return make_map_versions(settings())


_latest_seen: dict[str, tuple[float, str]] = {}


def _published_version(map_name: str) -> str:
    """The version LATEST names, looked up at most every ``map_refresh_seconds``."""
    now = time.monotonic()
    seen = _latest_seen.get(map_name)
    if seen and now - seen[0] < settings().map_refresh_seconds:
        return seen[1]
    version = map_versions().latest(map_name)
    if version is None:
        raise MapError(f"unknown map {map_name!r}: no version published")
    _latest_seen[map_name] = (now, version)
    return version


def _fine_source(ref_map: ReferenceMap) -> Callable[[str], Path] | None:
    """Where the fine stage finds the photo of a reference that lacks fine features: in the
    folder the map records (``featureloc map images``), when it exists on this host."""
    folder = ref_map.manifest.get(IMAGES_DIR_KEY)
    if not folder or not Path(folder).is_dir():
        return None

    def photo(rid: str) -> Path:
        found = sorted(Path(folder).glob(f"{glob.escape(rid)}.*"))
        if not found:
            raise ImageError(f"no photo of reference {rid!r} in {folder}")
        return found[0]

    return photo


def localiser(map_name: str) -> tuple[Localiser, str]:
    """The localiser of the map's current version, and that version's id.

    A job holds one Localiser for its whole run, so switching to a newer version (between
    jobs) never mixes two versions in one job.
    """
    s = settings()
    validate_map_name(map_name)
    if s.map_backend == "s3":
        version = _published_version(map_name)
        cached = _localisers.get(map_name)
        if cached and cached[0] == version:
            return cached[1], version
        path = map_versions().pull(map_name, version, s.map_cache_dir)
    else:
        path, version = _map_folder(map_name)
    return _load(map_name, version, path), version


def fit_localiser(map_name: str) -> Localiser:
    """The localiser a map's fit measures with (workers/fit.py): of the map's own folder, where
    the fit writes its rows (with ``map_backend=s3`` not the published copy jobs use), kept
    between the fit's steps while the folder's version holds. A step that loaded the models
    and the map anew cost the Getty map 0.05 s per position on an idle 2-core machine and
    about 0.8 s on a loaded one (BENCHMARKS.md sections 15 and 19)."""
    validate_map_name(map_name)
    path, version = _map_folder(map_name)
    key = map_name if settings().map_backend == "dir" else f"{map_name} (fit)"
    return _load(key, version, path)


def _map_folder(map_name: str) -> tuple[Path, str]:
    store = MapStore(settings().maps_dir)
    path = store.path(map_name)
    if not (path / "manifest.json").is_file():
        store.open(map_name)  # raises MapError("unknown map ...")
    return path, _local_version(path)


def _load(key: str, version: str, path: Path) -> Localiser:
    """The localiser cached under ``key`` if it is of ``version``, else the map at ``path``
    loaded (and cached) anew."""
    cached = _localisers.get(key)
    if cached and cached[0] == version:
        return cached[1]
    s = settings()
    t0 = time.perf_counter()
    ref_map = ReferenceMap.load(path)
    loc = Localiser(
        ref_map,
        device=s.resolved_device(),
        fine_source=_fine_source(ref_map),
        verify_threads=s.verify_threads or 1,  # 0 outside a worker: one thread
    )
    _localisers[key] = (version, loc)
    log.info(
        "process %d loaded map %r (%s, %d references) in %.1f s",
        os.getpid(), key, version, len(ref_map), time.perf_counter() - t0,
    )  # fmt: skip
    return loc


def preload(map_names: Iterable[str]) -> list[str]:
    """Load the localisers of ``map_names`` in this process, which is a CPU worker's main
    process about to fork its pool; returns the names loaded.

    The pool's processes inherit them copy-on-write: N processes share one copy of the models,
    the maps' ids and indexes (measured in BENCHMARKS.md, "Scale"), and none loads on its first
    job. ``gc.freeze()`` moves everything loaded so far out of the collector's generations: a
    collection in a child would otherwise write to every object's header and so copy the pages
    it shares. Not on a GPU (CUDA does not survive a fork: each process loads its own), and a
    map that fails to load is logged and left to load lazily, as without preloading.
    """
    s = settings()
    if s.resolved_device() != "cpu":
        log.warning("preload_maps ignored: device %s cannot be shared by fork", s.resolved_device())
        return []
    loaded = []
    for name in map_names:
        try:
            localiser(name)
            loaded.append(name)
        except (MapError, OSError) as exc:
            log.warning("map %r not preloaded: %s", name, exc)
    # Clients made while loading (object storage) must not be shared by the forked processes.
    map_versions.cache_clear()
    blob_store.cache_clear()
    gc.freeze()
    return loaded
