"""What a worker process keeps between tasks: settings, the database, and loaded maps.

Models and map features load once per process (lazily, on the first task, so nothing touches
CUDA in the parent before prefork forks); a map is reloaded when its parts change on disk.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path

from core.localiser import Localiser
from core.mapstore import MapStore, part_files
from core.settings import Settings, get_settings
from db.session import Database
from workers.blobstore import BlobStore, S3BlobStore, make_blob_store

_localisers: dict[str, tuple[tuple, Localiser]] = {}


@lru_cache(maxsize=1)
def settings() -> Settings:
    s = get_settings()
    if s.torch_threads:
        import cv2
        import torch

        torch.set_num_threads(s.torch_threads)
        cv2.setNumThreads(s.torch_threads)
    return s


@lru_cache(maxsize=1)
def database() -> Database:
    return Database(settings().database_url.get_secret_value())


@lru_cache(maxsize=1)
def blob_store() -> BlobStore | S3BlobStore:
    # Per process, created after the fork: an S3 client keeps its connections between tasks.
    return make_blob_store(settings())


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _map_version(path: Path) -> tuple:
    """Changes whenever a part or the retrieval state is added or replaced."""
    files = part_files(path / "parts") + sorted(path.glob("retrieval/*"))
    return tuple((f.name, f.stat().st_mtime_ns) for f in files) + (
        (path / "manifest.json").stat().st_mtime_ns,
    )


def localiser(map_name: str) -> Localiser:
    store = MapStore(settings().maps_dir)
    path = store.path(map_name)
    if not (path / "manifest.json").is_file():
        store.open(map_name)  # raises MapError("unknown map ...")
    version = _map_version(path)
    cached = _localisers.get(map_name)
    if cached and cached[0] == version:
        return cached[1]
    loc = Localiser(store.open(map_name), device=settings().resolved_device())
    _localisers[map_name] = (version, loc)
    return loc
