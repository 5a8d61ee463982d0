"""Stale job recovery: no accepted job may stay ``pending`` or ``running`` forever.

A job's message can be lost without anyone noticing: Redis restarted without persistence (queued
and unacknowledged messages gone), or a whole worker was killed (its unacknowledged message comes
back only after the broker's visibility timeout, which is long). The database still has the row,
so the row is the truth and the message is re-sent from it:

- ``running`` jobs whose ``started_at`` is older than ``older_than`` (default: the hard time
  limit, after which no live worker can still be on them) are set back to ``pending`` and re-sent;
- ``pending`` jobs created longer ago than ``older_than`` are re-sent when the broker holds no
  message for them (for Redis: not in the queue list nor in the unacknowledged hash; other
  brokers cannot be looked into, so they are re-sent by age alone).

Re-sending is safe because the task is idempotent: a delivery of a ``done`` job is skipped, and a
result replaces candidates in one transaction. It runs at worker start, every
``stale_check_interval`` seconds in the worker's main process, and on demand with
``featureloc jobs recover``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from core.settings import Settings, get_settings
from db import queries
from db.session import Database
from workers.celery_app import make_celery
from workers.client import send_job

log = logging.getLogger(__name__)

# Redis transport's hash of delivered-but-unacknowledged messages (kombu's default name).
REDIS_UNACKED_KEY = "unacked"


@dataclass
class RecoveryReport:
    requeued_running: list[str] = field(default_factory=list)
    resent_pending: list[str] = field(default_factory=list)
    still_queued: int = 0  # old pending jobs whose message the broker still holds

    @property
    def total(self) -> int:
        return len(self.requeued_running) + len(self.resent_pending)


def _queued_job_ids(celery: Celery, settings: Settings, job_ids: list[str]) -> set[str] | None:
    """Which of ``job_ids`` have a message in the broker; None when it cannot be looked into."""
    if not settings.broker_url.get_secret_value().startswith(("redis://", "rediss://")):
        return None
    with celery.connection_for_write() as conn:
        client = conn.default_channel.client
        raw = client.lrange(settings.localise_queue, 0, -1) + client.hvals(REDIS_UNACKED_KEY)
    # Celery puts the task id and the args' repr in the headers, both carry the job id.
    blob = b"\n".join(raw).decode(errors="replace")
    return {j for j in job_ids if j in blob}


def recover_jobs(
    settings: Settings | None = None,
    older_than: timedelta | None = None,
    celery: Celery | None = None,
) -> RecoveryReport:
    """Re-send the messages of jobs that lost theirs (see the module docstring)."""
    settings = settings or get_settings()
    celery = celery or make_celery(settings)
    if older_than is None:
        older_than = timedelta(seconds=settings.task_time_limit)
    db = Database(settings.database_url.get_secret_value())
    report = RecoveryReport()

    with db.session() as s:
        for job in queries.find_stale_jobs(s, older_than):
            queries.mark_pending(job)  # so the next check sees it queued, not stale
            send_job(celery, settings, job)  # inside the transaction: no reset without a message
            report.requeued_running.append(job.id)

    with db.session() as s:
        old_pending = queries.find_old_pending_jobs(s, older_than)
        ids = [j.id for j in old_pending if j.id not in report.requeued_running]
        queued = _queued_job_ids(celery, settings, ids) if ids else set()
        for job in old_pending:
            if job.id in report.requeued_running:
                continue
            if queued is not None and job.id in queued:
                report.still_queued += 1
                continue
            send_job(celery, settings, job)
            report.resent_pending.append(job.id)

    if report.total:
        log.warning(
            "recovered %d stale running and %d unqueued pending job(s)",
            len(report.requeued_running),
            len(report.resent_pending),
        )
    return report


# ------------------------------------------------------------------- in the worker main process

_stop = threading.Event()


def _check_forever(settings: Settings, celery: Celery, interval: float) -> None:
    while not _stop.wait(interval):
        _recover_logged(settings, celery)


def _recover_logged(settings: Settings, celery: Celery) -> None:
    try:
        recover_jobs(settings, celery=celery)
    except Exception as exc:  # the database or broker is away: try again next round
        log.warning("stale job check failed: %s: %s", type(exc).__name__, exc)


@worker_ready.connect
def _on_worker_ready(sender=None, **_kwargs) -> None:
    settings = get_settings()
    celery = sender.app
    _recover_logged(settings, celery)
    if settings.stale_check_interval > 0:
        _stop.clear()
        threading.Thread(
            target=_check_forever,
            args=(settings, celery, settings.stale_check_interval),
            name="featureloc-stale-check",
            daemon=True,
        ).start()


@worker_shutdown.connect
def _on_worker_shutdown(**_kwargs) -> None:
    _stop.set()
