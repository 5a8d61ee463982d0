"""Celery tasks. Messages carry ids and small JSON, never image bytes or pickles.

``featureloc.localise(job_id, map_name, image_key, options)`` — documented in the README so a
service in another language can send it by name.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError

from core.errors import InputError
from core.images import decode_image
from core.localiser import LocaliseOptions
from db import queries
from workers import runtime
from workers.blobstore import BlobNotFound
from workers.celery_app import LOCALISE_TASK
from workers.maps import image_limits
from workers.retry import MAX_RETRIES, RETRY_POLICY, TransientFault, is_transient, last_try

log = logging.getLogger(__name__)

# Deliveries of one job (worker deaths and retries together) before it is failed for good: a photo
# that kills its worker every time must not be redelivered forever.
MAX_ATTEMPTS = MAX_RETRIES + 4


@shared_task(name=LOCALISE_TASK, bind=True, **RETRY_POLICY)
def localise(
    self, job_id: str, map_name: str, image_key: str, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    worker = runtime.worker_name()
    db = runtime.database()
    try:
        with db.session() as s:
            queries.create_job(s, job_id, map_name, image_key, options or {})
            job = queries.claim_job(s, job_id, worker)
            if job is not None and job.status == "done":
                return {"job_id": job_id, "status": "done", "skipped": True}
            attempts = job.attempts if job is not None else 0
        if attempts > MAX_ATTEMPTS:
            return _fail(job_id, f"gave up after {attempts - 1} attempts (worker lost?)", worker)
        return _run(job_id, map_name, image_key, options or {}, worker)
    except Exception as exc:
        if not is_transient(exc):
            # A bug or a constraint violation: record it rather than leave the job running.
            _fail_quietly(job_id, f"internal error: {type(exc).__name__}: {exc}", worker)
            raise
        if last_try(self):
            _fail_quietly(job_id, f"gave up after {MAX_RETRIES} retries: {exc}", worker)
            raise
        log.warning("job %s: transient fault, retrying: %s", job_id, exc)
        raise TransientFault(str(exc)) from exc


def _run(job_id: str, map_name: str, image_key: str, options: dict, worker: str) -> dict:
    settings = runtime.settings()
    t0 = time.perf_counter()
    try:
        opts = LocaliseOptions.parse(options)
        image = decode_image(runtime.blob_store().get(image_key), image_limits(settings))
        loc, map_version = runtime.localiser(map_name)
        load_s = time.perf_counter() - t0
        result = loc.localise(image, opts)
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
            worker=worker,
            candidates=[c for c in result.candidates if c.tentative_matches > 0],
        )
    return {"job_id": job_id, "status": "done", "x": est.x, "y": est.y}


def _fail(job_id: str, reason: str, worker: str) -> dict:
    with runtime.database().session() as s:
        queries.mark_failed(s, job_id, reason, worker)
    return {"job_id": job_id, "status": "failed", "error": reason}


def _fail_quietly(job_id: str, reason: str, worker: str) -> None:
    try:
        _fail(job_id, reason, worker)
    except Exception:  # the database is what failed; the job stays for stale detection
        log.exception("job %s: could not record failure", job_id)
