"""Celery tasks. Messages carry ids and small JSON, never image bytes or pickles.

``featureloc.localise(job_id, map_name, image_key, options)`` — documented in the README so a
service in another language can send it by name. The message is checked first
(workers/messages.py); the job is then computed from its stored row, never from the message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from celery import Celery, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import celeryd_after_setup, task_rejected, task_unknown
from sqlalchemy.exc import DBAPIError

from core.camera import Camera
from core.errors import InputError
from core.images import decode_image
from core.localiser import LocaliseOptions
from core.photoset import localise_set
from db import queries
from db.models import Job, JobPhoto, JobStatus
from db.types import utcnow
from workers import runtime
from workers.blobstore import BlobNotFound
from workers.celery_app import LOCALISE_TASK
from workers.figures import keep_figures
from workers.hardlimit import on_hard_time_limit
from workers.heartbeat import Heartbeat, holder_alive
from workers.job_fields import JobConflict, JobFields, record_job, with_default_profile
from workers.maps import image_limits
from workers.messages import BadMessage, parse_localise, record_bad_message
from workers.retry import MAX_RETRIES, RETRY_POLICY, TransientFault, is_transient, last_try
from workers.settings import Settings

log = logging.getLogger(__name__)

# Deliveries of one job (worker deaths and retries together) before it is failed for good: a photo
# that kills its worker every time must not be redelivered forever.
MAX_ATTEMPTS = MAX_RETRIES + 4


def _held_elsewhere(job: Job) -> bool:
    """Another process is on this job: its heartbeat is fresh and it is not known dead."""
    fresh = timedelta(seconds=runtime.settings().stale_after)
    beat = job.heartbeat_at or job.started_at
    return beat is not None and utcnow() - beat < fresh and holder_alive(job.worker)


@shared_task(name=LOCALISE_TASK, bind=True, **RETRY_POLICY)
def localise(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``localise(job_id, map_name, image_key, options={}, *, sent_at=None)``.

    Declared with ``*args`` so that a message with the wrong arguments reaches our checks (and
    is stored as a failure) instead of raising TypeError inside Celery, where nobody sees it.
    """
    worker = runtime.worker_name()
    job_id: str | None = None
    try:
        try:
            msg = parse_localise(args, kwargs)
        except BadMessage as exc:
            where = record_bad_message(
                runtime.database(), LOCALISE_TASK, self.request.id, args, kwargs, str(exc), worker
            )
            log.warning("refused a localise message (%s): %s", where, exc)
            return {"status": "refused", "error": str(exc), "stored_as": where}
        job_id = msg.fields.job_id
        return _localise(msg.fields, msg.sent_at, worker)
    except Exception as exc:
        if not is_transient(exc):
            # A bug or a constraint violation: record it rather than leave the job running.
            if job_id is not None:
                _fail_quietly(job_id, f"internal error: {type(exc).__name__}: {exc}", worker)
            raise
        if last_try(self):
            if job_id is not None:
                _fail_quietly(job_id, f"gave up after {MAX_RETRIES} retries: {exc}", worker)
            raise
        log.warning("job %s: transient fault, retrying: %s", job_id, exc)
        raise TransientFault(str(exc)) from exc


def _localise(fields: JobFields, sent_at: datetime | None, worker: str) -> dict[str, Any]:
    job_id = fields.job_id
    db = runtime.database()
    try:
        with db.session() as s:
            record_job(s, fields, created_at=sent_at)
            job = queries.claim_job(s, job_id, worker, held_elsewhere=_held_elsewhere)
            assert job is not None  # recorded just above, in this transaction
            status, holder, attempts = job.status, job.worker, job.attempts
            # What is computed is the stored request (equal to the message: checked above).
            stored = (job.map_name, job.image_key, dict(job.options or {}))
            photos = [SetPhoto.of(p) for p in queries.get_job_photos(s, job_id)]
    except JobConflict as exc:
        # The stored job stays as it is; the refused message is kept with its reason.
        with db.session() as s:
            queries.record_dead_letter(
                s,
                task=LOCALISE_TASK,
                args=[job_id, fields.map_name, fields.image_key, fields.options],
                kwargs={},
                reason=str(exc),
                job_id=job_id,
                worker=worker,
            )
        log.warning("job %s: refused a re-send: %s", job_id, exc)
        return {"job_id": job_id, "status": "refused", "error": str(exc)}
    if status == "done":
        return {"job_id": job_id, "status": "done", "skipped": True}
    if holder != worker:  # a duplicate message of a job a live process is running
        return {"job_id": job_id, "status": "running", "skipped": True, "on": holder}
    if attempts > MAX_ATTEMPTS:
        return _fail(job_id, f"gave up after {attempts - 1} attempts (worker lost?)", worker)
    interval = runtime.settings().heartbeat_interval
    with Heartbeat(db, job_id, worker, interval):
        return _run(job_id, *stored, worker, photos)


def _run(
    job_id: str,
    map_name: str,
    image_key: str,
    options: dict,
    worker: str,
    photos: list[SetPhoto] | None = None,
) -> dict:
    """Localise the job's photo, or its photo set (``photos``, core/photoset.py): every
    photo of a set is decoded before any is localised, so a bad one fails the whole job."""
    settings = runtime.settings()
    t0 = time.perf_counter()
    try:
        opts = LocaliseOptions.parse(with_default_profile(options, settings))
        if photos:
            images = [_decode_set_photo(p.image_key, n, settings) for n, p in enumerate(photos, 1)]
        else:
            images = [decode_image(runtime.blob_store().get(image_key), image_limits(settings))]
        loc, map_version = runtime.localiser(map_name)
        load_s = time.perf_counter() - t0
        if photos:
            yaws = [p.yaw_deg for p in photos if p.yaw_deg is not None]
            one_set = localise_set(
                loc,
                images,
                opts,
                yaws=yaws if len(yaws) == len(photos) else None,
                cameras=[p.camera for p in photos],
            )
            result, each_photo = one_set.as_result(), one_set.photos
        else:
            result = loc.localise(images[0], opts)
            each_photo = [result]
    except InputError as exc:
        return _fail(job_id, str(exc), worker)
    except BlobNotFound:
        return _fail(job_id, f"query image {image_key} is not in the blob store", worker)
    except SoftTimeLimitExceeded:
        return _fail(job_id, f"time limit of {settings.task_soft_time_limit} s exceeded", worker)
    except DBAPIError:
        raise  # localise() retries it when transient
    except Exception as exc:  # a bug, not bad input: record it so the job does not hang
        log.exception("job %s failed", job_id)
        return _fail(job_id, f"internal error: {type(exc).__name__}: {exc}", worker)

    est = result.estimate
    timings = {"load": load_s, **result.timings, "total": time.perf_counter() - t0}
    with runtime.database().session() as s:
        queries.save_result(
            s,
            job_id,
            x=est.x,
            y=est.y,
            confidence=est.confidence,
            localised=est.localised,
            timings=timings,
            matcher=opts.matcher,
            method=est.method,
            map_version=map_version,
            profile_used=result.profile_used,
            profile_note=result.profile_note,
            calibrated=result.calibrated,
            fit_id=result.fit_id,
            heading=est.heading,
            pose_inliers=est.pose_inliers,
            worker=worker,
            candidates=[c for c in result.candidates if c.tentative_matches > 0],
            photo_answers=[
                queries.PhotoAnswer(
                    p.estimate.x, p.estimate.y, p.estimate.localised, p.estimate.heading
                )
                for p in each_photo
            ]
            if photos
            else (),
            figure_inliers=keep_figures(est, each_photo, images, runtime.blob_store()),
        )
    return {"job_id": job_id, "status": "done", "x": est.x, "y": est.y}


@dataclass(frozen=True)
class SetPhoto:
    """One stored photo of a set job (db.models.JobPhoto), as the worker uses it."""

    image_key: str
    yaw_deg: float | None
    camera: Camera | None

    @classmethod
    def of(cls, row: JobPhoto) -> SetPhoto:
        camera = Camera.model_validate(row.camera) if row.camera else None
        return cls(row.image_key, row.yaw_deg, camera)


def _decode_set_photo(image_key: str, n: int, settings: Settings) -> np.ndarray:
    try:
        return decode_image(runtime.blob_store().get(image_key), image_limits(settings))
    except InputError as exc:
        raise InputError(f"photo {n} of the set: {exc}") from None
    except BlobNotFound:
        raise InputError(f"photo {n} of the set ({image_key}) is not in the blob store") from None


def _fail(job_id: str, reason: str, worker: str) -> dict:
    with runtime.database().session() as s:
        queries.mark_failed(s, job_id, reason, worker)
    return {"job_id": job_id, "status": "failed", "error": reason}


@on_hard_time_limit(LOCALISE_TASK)
def _job_killed_at_the_hard_limit(app: Celery, args: tuple, kwargs: dict) -> None:
    """A job killed at the hard time limit (workers/hardlimit.py) fails at once with the
    reason, instead of being re-sent by the stale check to run into the same limit up to
    ``MAX_ATTEMPTS`` times."""
    job_id = args[0] if args else kwargs.get("job_id")
    if not isinstance(job_id, str):
        return  # a malformed message: nothing of it was recorded as a job
    reason = f"hard time limit of {runtime.settings().task_time_limit} s exceeded"
    try:
        with runtime.database().session() as s:
            job = queries.get_job(s, job_id)
            if job is not None and job.status == JobStatus.RUNNING.value:
                queries.mark_failed(s, job_id, reason)
    except Exception:  # the database is away: the stale check re-sends the job later
        log.exception("job %s: could not record the hard time limit", job_id)
        return
    log.error("job %s: %s", job_id, reason)


def _fail_quietly(job_id: str, reason: str, worker: str) -> None:
    try:
        _fail(job_id, reason, worker)
    except Exception:  # the database is what failed; the job stays for stale detection
        log.exception("job %s: could not record failure", job_id)


# Messages the worker cannot even hand to a task: an unknown task name, or a message that is not
# a task at all. Celery logs and drops them; a dead letter keeps them readable. (A body Celery
# cannot decode, e.g. pickle, raises no signal: Celery only logs it.)


@task_unknown.connect
def _on_unknown_task(name=None, id=None, message=None, **_kwargs) -> None:
    _dead_letter(str(name), id, message, f"unknown task {name!r}")


@task_rejected.connect
def _on_rejected_message(message=None, exc=None, **_kwargs) -> None:
    headers = getattr(message, "headers", None) or {}
    reason = f"message refused: {type(exc).__name__}: {exc}" if exc else "not a task message"
    _dead_letter(str(headers.get("task", "?")), headers.get("id"), message, reason)


def _dead_letter(task: str, message_id: Any, message: Any, reason: str) -> None:
    try:
        body = message.payload if message is not None else None
    except Exception:  # the body itself is what could not be decoded
        body = getattr(message, "body", None)
    try:
        with runtime.database().session() as s:
            queries.record_dead_letter(
                s,
                task=task,
                args=body,
                kwargs={},
                reason=reason,
                message_id=message_id,
                worker=runtime.worker_name(),
            )
    except Exception:
        log.exception("could not store a dead letter for %s", task)


@celeryd_after_setup.connect
def _preload_maps(**_: Any) -> None:
    """In the worker's main process, once logging is set up and before the pool forks: the
    maps of ``preload_maps``."""
    names = runtime.settings().preload_maps
    if names:
        log.info("preloaded maps %s before forking the pool", runtime.preload(names))
