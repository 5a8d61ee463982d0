"""The database API of workers and the CLI.

Every function takes a :class:`~sqlalchemy.orm.Session` first and does not commit: the caller's
``Database.session()`` block commits (or rolls back) the whole unit of work. Functions flush when
they need database-generated values or must see constraint violations early.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.types import CandidateResult
from db.models import (
    MESSAGE_ID_LENGTH,
    TASK_NAME_LENGTH,
    CandidateMatch,
    DeadLetter,
    Job,
    JobPhoto,
    JobStatus,
    Map,
    ReferenceImage,
)
from db.types import utcnow

# Long enough for a traceback's last lines, short enough for a table listing.
MAX_ERROR_LENGTH = 4000
# Raw arguments kept of a dead letter: enough to see what was sent, bounded for a flood of junk.
MAX_ARGUMENTS_LENGTH = 16_384
# Rows per INSERT batch when adding references (bounded memory and statement size).
REFERENCE_BATCH = 5000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------- jobs


def create_job(
    s: Session,
    job_id: str,
    map_name: str,
    image_key: str,
    options: Mapping[str, Any],
    created_at: datetime | None = None,
) -> tuple[Job, bool]:
    """Insert a pending job, or return the existing one: ``(job, created)``.

    Idempotent and race-safe: when another client inserts the same id between our look-up and our
    insert, the unique violation is rolled back to a SAVEPOINT and the other client's row returned.
    ``created_at`` is when the job was sent (default: now). Fields are not validated here: callers
    check them first (workers/job_fields.py), the same way on every backend.
    """
    existing = s.get(Job, job_id)
    if existing is not None:
        return existing, False
    job = Job(
        id=job_id,
        map_name=map_name,
        image_key=image_key,
        options=dict(options),
        status=JobStatus.PENDING.value,
        attempts=0,
        created_at=created_at or utcnow(),
    )
    try:
        with s.begin_nested():
            s.add(job)
    except IntegrityError:
        # The other insert has committed (PostgreSQL waits for it before raising), so it is visible.
        existing = s.get(Job, job_id, populate_existing=True)
        if existing is None:  # not a duplicate id after all: some other constraint failed
            raise
        return existing, False
    return job, True


def job_conflict(job: Job, map_name: str, image_key: str, options: Mapping[str, Any]) -> str | None:
    """Why a request for ``job.id`` is not the stored job (None when it is the same request).

    A job id names one photo, map and options: reusing it for another would compute one request
    and show the other's fields.
    """
    diffs = [
        name
        for name, stored, sent in (
            ("map", job.map_name, map_name),
            ("image_key", job.image_key, image_key),
            ("options", job.options or {}, dict(options)),
        )
        if stored != sent
    ]
    if not diffs:
        return None
    return (
        f"job id {job.id!r} is taken by another request (its {', '.join(diffs)} differ): "
        "a job id names one photo, map and options; use a new id"
    )


def get_job(s: Session, job_id: str) -> Job | None:
    return s.get(Job, job_id)


def image_in_use(s: Session, image_key: str) -> bool:
    """Whether a job refers to the photo ``image_key`` (content-addressed: several jobs may)."""
    return s.scalar(select(Job.id).where(Job.image_key == image_key).limit(1)) is not None


def job_ids_starting_with(s: Session, prefix: str, limit: int = 10) -> list[str]:
    """Ids of jobs that begin with ``prefix`` (taken literally: ``%`` and ``_`` are not
    wildcards), in order, at most ``limit``: how a person names a job by the start of its id."""
    # LIKE may use the key's index; SQLite's LIKE ignores case, the substring check does not.
    stmt = (
        select(Job.id)
        .where(
            Job.id.startswith(prefix, autoescape=True),
            func.substr(Job.id, 1, len(prefix)) == prefix,
        )
        .order_by(Job.id)
        .limit(limit)
    )
    return list(s.scalars(stmt))


def get_candidates(s: Session, job_id: str) -> list[CandidateResult]:
    """Candidate matches of a job, strongest evidence (most inliers) first."""
    columns = [CandidateMatch.__table__.c[name] for name in CandidateResult.ROW_FIELDS]
    stmt = (
        select(*columns)
        .where(CandidateMatch.job_id == job_id)
        .order_by(CandidateMatch.inliers.desc(), CandidateMatch.rank)
    )
    return [CandidateResult.from_row(row) for row in s.execute(stmt).mappings()]


def withdraw_pending_job(s: Session, job_id: str) -> None:
    """Delete a job that never reached the queue, and its photos (only while it is pending)."""
    job = s.get(Job, job_id)
    if job is None or job.status != "pending":
        return
    s.execute(delete(JobPhoto).where(JobPhoto.job_id == job_id))
    s.delete(job)


def add_job_photos(
    s: Session,
    job_id: str,
    image_keys: Sequence[str],
    yaws: Sequence[float] | None = None,
    cameras: Sequence[Mapping[str, Any] | None] | None = None,
) -> None:
    """Record the photos of a photo-set job in order (nothing when they are recorded already:
    a resubmission of the same set has the same job id, so the same photos)."""
    if s.scalar(select(func.count()).where(JobPhoto.job_id == job_id)):
        return
    for i, key in enumerate(image_keys):
        camera = cameras[i] if cameras is not None else None
        s.add(
            JobPhoto(
                job_id=job_id,
                index=i,
                image_key=key,
                yaw_deg=None if yaws is None else float(yaws[i]),
                camera=None if camera is None else dict(camera),
            )
        )
    s.flush()


def get_job_photos(s: Session, job_id: str) -> list[JobPhoto]:
    """The photos of a photo-set job in order; empty for a single-photo job."""
    return list(
        s.scalars(select(JobPhoto).where(JobPhoto.job_id == job_id).order_by(JobPhoto.index))
    )


def photo_counts(s: Session, job_ids: Collection[str]) -> dict[str, int]:
    """How many photos each photo-set job among ``job_ids`` has (single-photo jobs are absent)."""
    if not job_ids:
        return {}
    stmt = (
        select(JobPhoto.job_id, func.count())
        .where(JobPhoto.job_id.in_(list(job_ids)))
        .group_by(JobPhoto.job_id)
    )
    return {job_id: int(n) for job_id, n in s.execute(stmt)}


def _lock_job(s: Session, job_id: str) -> Job | None:
    # FOR UPDATE serialises two deliveries of one job on PostgreSQL; SQLite's write lock
    # (BEGIN IMMEDIATE) already does. populate_existing: never act on a stale identity-map copy.
    stmt = (
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return s.scalars(stmt).one_or_none()


def claim_job(
    s: Session, job_id: str, worker: str, held_elsewhere: Callable[[Job], bool] | None = None
) -> Job | None:
    """Mark a job running on ``worker`` and count the attempt.

    Returns None when the job does not exist. A job that is already ``done`` is returned
    unchanged (status stays ``done``, attempts not incremented): the caller must check
    ``job.status == "done"`` and skip the work, since a redelivered task must not redo it.
    ``pending``, ``failed`` (a retry) and ``running`` (redelivered after a worker died) are claimed,
    except a ``running`` job for which ``held_elsewhere(job)`` says another live process is on it:
    it is returned unchanged too (``job.worker != worker``), a duplicate delivery to skip.
    """
    job = _lock_job(s, job_id)
    if job is None or job.status == JobStatus.DONE:
        return job
    if (
        job.status == JobStatus.RUNNING
        and job.worker != worker
        and held_elsewhere is not None
        and held_elsewhere(job)
    ):
        return job
    job.status = JobStatus.RUNNING.value
    job.started_at = job.heartbeat_at = utcnow()
    job.finished_at = None
    job.worker = worker
    job.attempts += 1
    s.flush()
    return job


@dataclass(frozen=True)
class PhotoAnswer:
    """One photo's own answer within a photo set."""

    x: float | None
    y: float | None
    localised: bool
    heading: float | None = None


def save_result(
    s: Session,
    job_id: str,
    *,
    x: float | None,
    y: float | None,
    confidence: float | None,
    localised: bool,
    timings: Mapping[str, float],
    matcher: str | None,
    worker: str | None,
    candidates: Sequence[CandidateResult],
    method: str | None = None,
    map_version: str | None = None,
    figure_inliers: bytes | None = None,
    profile_used: str | None = None,
    profile_note: str | None = None,
    calibrated: bool | None = None,
    fit_id: str | None = None,
    heading: float | None = None,
    pose_inliers: int | None = None,
    photo_answers: Sequence[PhotoAnswer] = (),
) -> Job:
    """Store a finished job and its candidates (replacing any from an earlier delivery), and
    for a photo set each photo's own answer (``photo_answers``, in the set's order).

    Everything happens in the caller's transaction, so readers see either the old state or the
    complete result.
    Raises LookupError when the job does not exist.
    """
    job = _lock_job(s, job_id)
    if job is None:
        raise LookupError(f"no job {job_id!r}")
    s.execute(delete(CandidateMatch).where(CandidateMatch.job_id == job_id))
    rows = [{**c.to_row(), "job_id": job_id} for c in candidates]
    if rows:
        s.execute(insert(CandidateMatch), rows)
    job.status = JobStatus.DONE.value
    job.estimate_x = x
    job.estimate_y = y
    job.confidence = confidence
    job.localised = localised
    job.timings = dict(timings)
    job.matcher = matcher
    job.method = method
    job.map_version = map_version
    job.figure_inliers = figure_inliers
    job.profile_used = profile_used
    job.profile_note = profile_note
    job.calibrated = calibrated
    job.fit_id = fit_id
    job.heading = heading
    job.pose_inliers = pose_inliers
    for index, answer in enumerate(photo_answers):
        s.execute(
            update(JobPhoto)
            .where(JobPhoto.job_id == job_id, JobPhoto.index == index)
            .values(x=answer.x, y=answer.y, localised=answer.localised, heading=answer.heading)
        )
    if worker is not None:
        job.worker = worker
    job.error = None
    job.finished_at = utcnow()
    s.flush()
    # The relationship may hold rows loaded before the bulk delete/insert.
    s.expire(job, ["candidates"])
    return job


def mark_failed(s: Session, job_id: str, reason: str, worker: str | None = None) -> Job | None:
    """Mark a job failed with ``reason`` (truncated to ``MAX_ERROR_LENGTH``). None if missing."""
    job = _lock_job(s, job_id)
    if job is None:
        return None
    job.status = JobStatus.FAILED.value
    job.error = _cut(reason, MAX_ERROR_LENGTH)
    job.finished_at = utcnow()
    if worker is not None:
        job.worker = worker
    s.flush()
    return job


def list_jobs(
    s: Session,
    *,
    map_name: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    map_names: Collection[str] | None = None,
    before: tuple[datetime, str] | None = None,
) -> list[Job]:
    """Jobs newest first, optionally only of one map (or of ``map_names``), one status, or
    created at/after ``since``. ``before`` = (created_at, id) of the last job of a previous page:
    keyset paging, stable while new jobs arrive."""
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if map_name is not None:
        stmt = stmt.where(Job.map_name == map_name)
    if map_names is not None:
        stmt = stmt.where(Job.map_name.in_(list(map_names)))
    if before is not None:
        at, job_id = before
        stmt = stmt.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < job_id)))
    if status is not None:
        stmt = stmt.where(Job.status == JobStatus(status).value)
    if since is not None:
        stmt = stmt.where(Job.created_at >= since)
    return list(s.scalars(stmt))


def heartbeat(s: Session, job_id: str, worker: str) -> bool:
    """Say that ``worker`` is still on the job; False when it no longer holds it."""
    held = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING.value)
        .values(heartbeat_at=utcnow())
        .returning(Job.id)
    )
    return held.first() is not None


def find_stale_jobs(s: Session, older_than: timedelta) -> list[Job]:
    """Running jobs with no heartbeat for ``older_than`` (their worker died).

    Rows written before heartbeats existed fall back to ``started_at``.
    """
    # Locked, and rows another recoverer holds skipped (PostgreSQL): one re-send per stale job
    # even when every worker's stale check runs at once. SQLite's write lock serialises them.
    last_sign = func.coalesce(Job.heartbeat_at, Job.started_at)
    return _jobs_since(s, JobStatus.RUNNING, last_sign, older_than, lock=True)


def find_old_pending_jobs(
    s: Session, older_than: timedelta, ids: Collection[str] | None = None
) -> list[Job]:
    """Pending jobs created more than ``older_than`` ago (their message may be lost), of
    ``ids`` only when given."""
    return _jobs_since(s, JobStatus.PENDING, Job.created_at, older_than, ids=ids)


def old_pending_job_ids(s: Session, older_than: timedelta) -> list[str]:
    """The ids of :func:`find_old_pending_jobs`: cheap for a backlog of thousands."""
    return list(s.scalars(_jobs_since_stmt(Job.id, JobStatus.PENDING, Job.created_at, older_than)))


def _jobs_since(
    s: Session,
    status: JobStatus,
    column: Any,
    older_than: timedelta,
    lock: bool = False,
    ids: Collection[str] | None = None,
) -> list[Job]:
    """Jobs in ``status`` whose ``column`` is more than ``older_than`` ago, oldest first."""
    stmt = _jobs_since_stmt(Job, status, column, older_than)
    if ids is not None:
        stmt = stmt.where(Job.id.in_(list(ids)))
    if lock:
        stmt = stmt.with_for_update(skip_locked=True)
    return list(s.scalars(stmt))


def _jobs_since_stmt(what: Any, status: JobStatus, column: Any, older_than: timedelta) -> Select:
    return (
        select(what)
        .where(Job.status == status.value, column < utcnow() - older_than)
        .order_by(column)
    )


def mark_pending(job: Job) -> None:
    """Set a stale running job back to pending, for its message to be sent again."""
    job.status = JobStatus.PENDING.value


# -------------------------------------------------------------------------------- dead letters


def record_dead_letter(
    s: Session,
    *,
    task: str,
    args: Any,
    kwargs: Any,
    reason: str,
    message_id: Any = None,
    job_id: str | None = None,
    worker: str | None = None,
) -> DeadLetter:
    """Keep a message no job could be made of, with its raw arguments and why.

    Anything is accepted (the message was malformed): values are cut to their columns' sizes and
    what JSON cannot hold is kept as its ``repr``. ``job_id`` only when it is a valid id.
    """
    raw = json.dumps({"args": args, "kwargs": kwargs}, default=repr, ensure_ascii=False)
    letter = DeadLetter(
        task=_cut(str(task), TASK_NAME_LENGTH),
        message_id=None if message_id is None else _cut(str(message_id), MESSAGE_ID_LENGTH),
        job_id=job_id,
        arguments=_cut(raw, MAX_ARGUMENTS_LENGTH),
        reason=_cut(reason, MAX_ERROR_LENGTH),
        worker=worker,
        created_at=utcnow(),
    )
    s.add(letter)
    s.flush()
    return letter


def list_dead_letters(
    s: Session, *, since: datetime | None = None, limit: int = 100
) -> list[DeadLetter]:
    """Dead letters newest first, optionally only those recorded at/after ``since``."""
    stmt = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(DeadLetter.created_at >= since)
    return list(s.scalars(stmt))


# ---------------------------------------------------------------------------------------- maps


def upsert_map(
    s: Session,
    name: str,
    extractor: Mapping[str, Any],
    retriever: Mapping[str, Any],
    references: Iterable[tuple[str, float, float]],
) -> Map:
    """Create or update map ``name`` and add the references it does not have yet.

    References already present keep their stored position (a map only grows; positions of
    existing references are not rewritten). ``num_references`` is recounted from the table.
    """
    map_row = s.scalars(select(Map).where(Map.name == name).with_for_update()).one_or_none()
    now = utcnow()
    if map_row is None:
        map_row = Map(
            name=name,
            extractor=dict(extractor),
            retriever=dict(retriever),
            num_references=0,
            created_at=now,
            updated_at=now,
        )
        s.add(map_row)
        s.flush()  # for map_row.id
    else:
        map_row.extractor = dict(extractor)
        map_row.retriever = dict(retriever)
        map_row.updated_at = now

    known = set(s.scalars(select(ReferenceImage.ref_id).where(ReferenceImage.map_id == map_row.id)))
    new_rows: list[dict[str, Any]] = []
    for ref_id, x, y in references:
        ref_id = str(ref_id)
        if ref_id in known:
            continue
        known.add(ref_id)  # also drops duplicates within this call
        new_rows.append({"map_id": map_row.id, "ref_id": ref_id, "x": float(x), "y": float(y)})
    for start in range(0, len(new_rows), REFERENCE_BATCH):
        s.execute(insert(ReferenceImage), new_rows[start : start + REFERENCE_BATCH])

    map_row.num_references = (
        s.scalar(
            select(func.count())
            .select_from(ReferenceImage)
            .where(ReferenceImage.map_id == map_row.id)
        )
        or 0
    )
    s.flush()
    return map_row


def get_map(s: Session, name: str) -> Map | None:
    return s.scalars(select(Map).where(Map.name == name)).one_or_none()


def list_maps(s: Session) -> list[Map]:
    return list(s.scalars(select(Map).order_by(Map.name)))


def get_references(s: Session, map_name: str) -> list[ReferenceImage]:
    """References of a map in insertion order (empty when the map does not exist)."""
    stmt = (
        select(ReferenceImage)
        .join(Map, ReferenceImage.map_id == Map.id)
        .where(Map.name == map_name)
        .order_by(ReferenceImage.id)
    )
    return list(s.scalars(stmt))
