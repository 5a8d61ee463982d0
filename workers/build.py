"""Map builds through the queue: many workers extract chunks in parallel, one step finalises.

``submit_build`` (the CLI's side) reads the positions CSV, leaves out references the map already
holds, records a ``map_builds`` row with one ``map_build_chunks`` row per chunk and sends one
``featureloc.build_chunk`` message per chunk to the build queue. Each chunk writes its own part
file, named after the build and chunk, so a redelivered chunk replaces its part rather than
duplicating references. The chunk that finishes last (counted under the build row's lock) sends
``featureloc.finalise_build``, which fits retrieval over the whole map and registers it, then
queues the map's geometry (workers/geometry.py: its own resumable steps, once the whole map's
features and retrieval are there).

Workers read the reference photos by path: they must see the same paths as the submitting host
(shared storage), and the maps directory must be shared too.

Message schemas (JSON, positional arguments)::

    featureloc.build_chunk     [build_id, chunk_index, [[ref_id, x, y, image_path], ...]]
    featureloc.finalise_build  [build_id]
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from core import defaults
from core.errors import InputError, MapError
from core.features.base import Extractor
from core.mapbuild import RefEntry, extract_entries, read_positions_csv
from core.mapstore import (
    DEFAULT_SET,
    FINE_EXTRACTOR_KEY,
    FINE_SET,
    PART_SUFFIX,
    MapStore,
    Reference,
    append_features,
    existing_reference_ids,
    feature_dir,
    read_manifest,
    write_part,
)
from core.registry import create_extractor, extractor_identity, retriever_class
from db import build_queries
from db.models import BuildStatus, ChunkStatus, MapBuild
from db.session import Database
from workers import runtime
from workers.celery_app import BUILD_CHUNK_TASK, FINALISE_BUILD_TASK
from workers.fit import send_refit
from workers.geometry import send_geometry
from workers.hardlimit import on_hard_time_limit
from workers.maps import image_limits, register_map
from workers.retry import RETRY_POLICY, TransientFault, is_transient, last_try
from workers.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 50


class BuildInProgress(InputError):
    """Another build of the same map is still running."""


# ------------------------------------------------------------------------------ submitting side


@dataclass(frozen=True)
class BuildPlan:
    build_id: str
    map_name: str
    total: int  # images in the CSV
    skipped: int  # already in the map
    chunks: int


def submit_build(
    settings: Settings,
    celery: Celery,
    name: str,
    images_dir: Path,
    positions_csv: Path,
    extractor: str | None = None,
    extractor_conf: dict | None = None,
    retriever: str | None = None,
    retriever_conf: dict | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    restart: bool = False,
) -> BuildPlan:
    """Plan a build (or an extension) of map ``name`` and queue its chunks.

    For an existing map, ``extractor``/``retriever`` default to the map's own (and must match
    it); a new map needs ``extractor``. Raises BuildInProgress when a build of the map is still
    active, unless ``restart`` abandons it (its late chunks are then skipped).
    """
    if chunk_size < 1:
        raise InputError("chunk size must be at least 1")
    store = MapStore(settings.maps_dir)
    extractor_id, retriever_id = _identities(
        store, name, extractor, extractor_conf, retriever, retriever_conf
    )
    entries = read_positions_csv(positions_csv, images_dir)
    have = existing_reference_ids(store.path(name)) if store.exists(name) else set()
    todo = [e for e in entries if e.reference.id not in have]
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    build_id = uuid.uuid4().hex
    db = Database(settings.database_url.get_secret_value())
    with db.session() as s:
        active = build_queries.active_build(s, name)
        if active is not None:
            if not restart:
                raise BuildInProgress(
                    f"build {active.id} of map {name!r} is still {active.status} "
                    f"({active.processed}/{active.total}); wait for it, or restart it"
                )
            build_queries.finish_build(s, active.id, "abandoned: a new build was started")
        build_queries.create_build(
            s,
            build_id,
            name,
            extractor_id,
            retriever_id,
            [len(c) for c in chunks],
            skipped=len(entries) - len(todo),
        )
    # After the commit, so a worker never receives a chunk whose rows it cannot see.
    for index, chunk in enumerate(chunks):
        celery.send_task(
            BUILD_CHUNK_TASK,
            args=[build_id, index, [_entry_message(e) for e in chunk]],
            queue=settings.build_queue,
        )
    if not chunks:  # nothing new: still (re)fit retrieval and register what the map holds
        send_finalise(celery, settings, build_id)
    return BuildPlan(build_id, name, len(entries), len(entries) - len(todo), len(chunks))


def _identities(
    store: MapStore,
    name: str,
    extractor: str | None,
    extractor_conf: dict | None,
    retriever: str | None,
    retriever_conf: dict | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The extractor and retriever a build records: the map's own when it exists."""
    if store.exists(name):
        manifest = read_manifest(store.path(name))
        ext, ret = manifest["extractor"], manifest.get("retriever", {"name": "exhaustive"})
        if extractor is not None and extractor != ext["name"]:
            raise MapError(
                f"map {name!r} was built with extractor {ext['name']!r}, not {extractor!r}"
            )
        return ext, ret
    if extractor is None:
        raise MapError(f"unknown map {name!r}: give an extractor to create it")
    # Validate names and options here, in the sender, rather than failing every chunk.
    ret = retriever_class(retriever or defaults.DEFAULT.retriever)(retriever_conf)
    return extractor_identity(extractor, extractor_conf), ret.identity()


def _entry_message(e: RefEntry) -> list:
    return [e.reference.id, e.reference.x, e.reference.y, str(Path(e.image).resolve())]


def send_finalise(celery: Celery, settings: Settings, build_id: str) -> None:
    celery.send_task(FINALISE_BUILD_TASK, args=[build_id], queue=settings.build_queue)


def build_progress(settings: Settings, build_id: str) -> MapBuild | None:
    with Database(settings.database_url.get_secret_value()).session() as s:
        return build_queries.get_build(s, build_id)


# ---------------------------------------------------------------------------------- worker side


@lru_cache(maxsize=4)
def _extractor(name: str, conf_json: str) -> Extractor:
    """One extractor (model weights) per process and configuration."""
    return create_extractor(name, json.loads(conf_json), runtime.settings().resolved_device())


def part_name(build_id: str, index: int) -> str:
    return f"part-{build_id}-{index:05d}{PART_SUFFIX}"


@shared_task(name=BUILD_CHUNK_TASK, bind=True, **RETRY_POLICY)
def build_chunk(self, build_id: str, index: int, entries: list[list]) -> dict[str, Any]:
    """Extract one chunk of references into its own part and record the outcome."""
    worker = runtime.worker_name()
    db = runtime.database()
    try:
        with db.session() as s:
            chunk = build_queries.claim_chunk(s, build_id, index, worker)
            if chunk is None:
                return {"build": build_id, "chunk": index, "status": "unknown build"}
            if chunk.status != ChunkStatus.RUNNING.value:
                return {"build": build_id, "chunk": index, "status": "skipped"}
            build = chunk.build
            map_name, ext, ret = build.map_name, build.extractor, build.retriever
        added, skipped, failed, error = _extract_chunk(build_id, index, entries, map_name, ext, ret)
        with db.session() as s:
            last = build_queries.finish_chunk(
                s, build_id, index, added=added, skipped=skipped, failed=failed, error=error
            )
        if last:
            send_finalise(self.app, runtime.settings(), build_id)
        return {"build": build_id, "chunk": index, "added": added, "failed": len(failed)}
    except Exception as exc:
        if not is_transient(exc) or last_try(self):
            raise
        log.warning("build %s chunk %d: transient fault, retrying: %s", build_id, index, exc)
        raise TransientFault(str(exc)) from exc


@on_hard_time_limit(BUILD_CHUNK_TASK)
def _chunk_killed_at_the_hard_limit(app: Celery, args: tuple, kwargs: dict) -> None:
    """A chunk killed at the hard time limit (workers/hardlimit.py) is recorded failed with
    its photos and the reason, and any part it wrote is removed, so that the build still ends
    (otherwise it waits on a chunk that nobody runs again)."""
    build_id, index, entries = (*args, *kwargs.values())[:3]
    settings = runtime.settings()
    reason = f"chunk {index} exceeded the hard time limit of {settings.task_time_limit} s"
    with runtime.database().session() as s:
        chunk = build_queries.get_chunk(s, build_id, index)
        if chunk is None or chunk.status in build_queries.CHUNK_FINISHED:
            return  # recorded already (an earlier delivery): its part belongs to the map
        path = MapStore(settings.maps_dir).path(chunk.build.map_name)
        for set_name in (DEFAULT_SET, FINE_SET):
            (feature_dir(path, set_name) / part_name(build_id, index)).unlink(missing_ok=True)
        last = build_queries.finish_chunk(
            s,
            build_id,
            index,
            added=0,
            skipped=0,
            failed={str(e[0]): reason for e in entries},
            error=reason,
        )
    log.error("build %s: %s", build_id, reason)
    if last:
        send_finalise(app, settings, build_id)


def _extract_chunk(
    build_id: str,
    index: int,
    entries: list[list],
    map_name: str,
    extractor: dict[str, Any],
    retriever: dict[str, Any],
) -> tuple[int, int, dict[str, str], str | None]:
    """(added, skipped, failed {id: reason}, chunk error); a bad image fails only itself."""
    settings = runtime.settings()
    refs = [RefEntry(Reference(str(i), float(x), float(y)), Path(p)) for i, x, y, p in entries]
    own_part = part_name(build_id, index)
    try:
        ext = _extractor(extractor["name"], json.dumps(extractor.get("conf") or {}, sort_keys=True))
        store = MapStore(settings.maps_dir)
        path = store.create(map_name, ext.identity(), retriever)
        # References another part already holds (an earlier build, a concurrent add) are skipped;
        # this chunk's own part is rewritten whole on a redelivery.
        have = existing_reference_ids(path, exclude=[own_part])
        todo = [e for e in refs if e.reference.id not in have]
        done, failed = extract_entries(todo, ext, image_limits(settings))
        write_part(path, done, name=own_part)
        _extract_fine(path, done, refs, own_part, image_limits(settings))
        return len(done), len(refs) - len(todo), failed, None
    except SoftTimeLimitExceeded:
        reason = f"chunk {index} exceeded the time limit of {settings.task_soft_time_limit} s"
    except (InputError, MapError, OSError) as exc:
        reason = f"chunk {index} failed: {exc}"
    except Exception as exc:
        if is_transient(exc):
            raise
        log.exception("build %s chunk %d failed", build_id, index)
        reason = f"chunk {index} failed: internal error: {type(exc).__name__}: {exc}"
    return 0, 0, {e.reference.id: reason for e in refs}, reason


def _extract_fine(
    path: Path,
    done: list[tuple[Reference, Any]],
    refs: list[RefEntry],
    part: str,
    limits: Any,
) -> None:
    """The chunk's fine features too, when the map has a fine set (``map build --fine``)."""
    ident = read_manifest(path).get(FINE_EXTRACTOR_KEY)
    if ident is None or not done:
        return
    fine = _extractor(ident["name"], json.dumps(ident.get("conf") or {}, sort_keys=True))
    ok = {ref.id for ref, _ in done}
    feats, _ = extract_entries([e for e in refs if e.reference.id in ok], fine, limits)
    append_features(path, FINE_SET, [(ref.id, f) for ref, f in feats], name=part)


@shared_task(name=FINALISE_BUILD_TASK, bind=True, **RETRY_POLICY)
def finalise_build(self, build_id: str) -> dict[str, Any]:
    """Fit retrieval over everything the map holds and register it; idempotent."""
    db = runtime.database()
    try:
        with db.session() as s:
            build = build_queries.get_build(s, build_id)
            if build is None or build.status != BuildStatus.FINALISING.value:
                return {"build": build_id, "status": "skipped"}
            map_name = build.map_name
        error = None
        settings = runtime.settings()
        try:
            register_map(settings, map_name)
        except (InputError, MapError, OSError, ValueError) as exc:
            error = f"finalising map {map_name!r} failed: {exc}"
        store = MapStore(settings.maps_dir)
        photos = store.images_dir(map_name) if error is None else None
        if settings.fit_after_build and photos is not None:
            send_refit(self.app, settings, store, map_name)
        if settings.geometry_after_build and error is None:
            send_geometry(self.app, settings, map_name)
        with db.session() as s:
            build_queries.finish_build(s, build_id, error)
        return {"build": build_id, "status": "failed" if error else "done"}
    except Exception as exc:
        if not is_transient(exc) or last_try(self):
            with db.session() as s:
                build_queries.finish_build(s, build_id, f"internal error: {exc}")
            raise
        raise TransientFault(str(exc)) from exc
