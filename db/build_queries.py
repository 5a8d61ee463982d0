"""The database side of chunked map builds (see ``workers/build.py``).

Same contract as :mod:`db.queries`: a Session first, no commits. Finishing a chunk locks the build
row (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers anyway), so
the counters stay exact under parallel workers and exactly one chunk sees "all chunks finished".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import BuildStatus, ChunkStatus, MapBuild, MapBuildChunk
from db.queries import MAX_ERROR_LENGTH
from db.types import utcnow

ACTIVE = (BuildStatus.RUNNING.value, BuildStatus.FINALISING.value)
CHUNK_FINISHED = (ChunkStatus.DONE.value, ChunkStatus.FAILED.value)


def create_build(
    s: Session,
    build_id: str,
    map_name: str,
    extractor: Mapping[str, Any],
    retriever: Mapping[str, Any],
    chunk_sizes: Sequence[int],
    skipped: int = 0,
) -> MapBuild:
    """A running build with one pending row per chunk; with no chunks it starts finalising."""
    build = MapBuild(
        id=build_id,
        map_name=map_name,
        status=BuildStatus.RUNNING.value if chunk_sizes else BuildStatus.FINALISING.value,
        extractor=dict(extractor),
        retriever=dict(retriever),
        total=sum(chunk_sizes) + skipped,
        processed=skipped,
        added=0,
        skipped=skipped,
        failed={},
        created_at=utcnow(),
    )
    s.add(build)
    s.flush()
    for index, size in enumerate(chunk_sizes):
        s.add(
            MapBuildChunk(
                build_id=build_id,
                index=index,
                size=size,
                status=ChunkStatus.PENDING.value,
                added=0,
                attempts=0,
            )
        )
    s.flush()
    return build


def get_build(s: Session, build_id: str) -> MapBuild | None:
    return s.get(MapBuild, build_id, populate_existing=True)


def active_build(s: Session, map_name: str) -> MapBuild | None:
    """The build of ``map_name`` still running or finalising, if any (newest first)."""
    stmt = (
        select(MapBuild)
        .where(MapBuild.map_name == map_name, MapBuild.status.in_(ACTIVE))
        .order_by(MapBuild.created_at.desc())
        .limit(1)
    )
    return s.scalars(stmt).one_or_none()


def list_builds(s: Session, map_name: str | None = None, limit: int = 20) -> list[MapBuild]:
    stmt = select(MapBuild).order_by(MapBuild.created_at.desc()).limit(limit)
    if map_name is not None:
        stmt = stmt.where(MapBuild.map_name == map_name)
    return list(s.scalars(stmt))


def _lock_build(s: Session, build_id: str) -> MapBuild | None:
    stmt = (
        select(MapBuild)
        .where(MapBuild.id == build_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return s.scalars(stmt).one_or_none()


def _lock_chunk(s: Session, build_id: str, index: int) -> MapBuildChunk | None:
    stmt = (
        select(MapBuildChunk)
        .where(MapBuildChunk.build_id == build_id, MapBuildChunk.index == index)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return s.scalars(stmt).one_or_none()


def get_chunk(s: Session, build_id: str, index: int) -> MapBuildChunk | None:
    """A build's chunk, locked for this transaction; None when there is no such chunk."""
    return _lock_chunk(s, build_id, index)


def claim_chunk(s: Session, build_id: str, index: int, worker: str) -> MapBuildChunk | None:
    """Mark a chunk running and count the attempt; None when there is no such chunk.

    A finished chunk, or any chunk of a build no longer running (abandoned), is returned
    unchanged: the caller checks ``chunk.status`` and ``chunk.build.status`` and skips the work.
    """
    chunk = _lock_chunk(s, build_id, index)
    if chunk is None or chunk.status in CHUNK_FINISHED:
        return chunk
    if chunk.build.status != BuildStatus.RUNNING.value:
        return chunk
    chunk.status = ChunkStatus.RUNNING.value
    chunk.attempts += 1
    chunk.worker = worker
    s.flush()
    return chunk


def finish_chunk(
    s: Session,
    build_id: str,
    index: int,
    *,
    added: int,
    skipped: int,
    failed: Mapping[str, str],
    error: str | None = None,
) -> bool:
    """Record a chunk's outcome once; True for the one call that finished the last chunk.

    ``error`` marks the whole chunk failed (its images should then be in ``failed``). A second
    delivery of a chunk already recorded changes nothing and returns False.
    """
    build = _lock_build(s, build_id)
    chunk = _lock_chunk(s, build_id, index)
    if build is None or chunk is None or chunk.status in CHUNK_FINISHED:
        return False
    chunk.status = ChunkStatus.FAILED.value if error else ChunkStatus.DONE.value
    chunk.added = added
    chunk.error = _truncate(error)
    chunk.finished_at = utcnow()
    build.processed += added + skipped + len(failed)
    build.added += added
    build.skipped += skipped
    if failed:
        build.failed = {**build.failed, **{k: _truncate(v) for k, v in failed.items()}}
    s.flush()
    if build.status != BuildStatus.RUNNING.value:
        return False
    unfinished = s.scalar(
        select(func.count())
        .select_from(MapBuildChunk)
        .where(MapBuildChunk.build_id == build_id, MapBuildChunk.status.not_in(CHUNK_FINISHED))
    )
    if unfinished:
        return False
    build.status = BuildStatus.FINALISING.value
    s.flush()
    return True


def finish_build(s: Session, build_id: str, error: str | None = None) -> MapBuild | None:
    """Mark a build done (or failed with ``error``)."""
    build = _lock_build(s, build_id)
    if build is None:
        return None
    build.status = BuildStatus.FAILED.value if error else BuildStatus.DONE.value
    build.error = _truncate(error)
    build.finished_at = utcnow()
    s.flush()
    return build


def _truncate(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_ERROR_LENGTH:
        return text
    return text[: MAX_ERROR_LENGTH - 3] + "..."
