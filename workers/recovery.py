"""Recovery: no accepted job may stay ``pending`` or ``running`` forever.

A job's message can be lost without anyone noticing: Redis restarted without persistence (queued
and unacknowledged messages gone), or a whole worker was killed (its unacknowledged message comes
back only after the broker's visibility timeout, which is long). The database still has the row,
so the row is the truth and the message is re-sent from it:

- ``running`` jobs whose heartbeat (workers/heartbeat.py) stopped ``stale_after`` seconds ago
  lost their worker: they are set back to ``pending`` and re-sent. A long job on a live worker
  keeps its heartbeat fresh and is left alone;
- ``pending`` jobs whose message the broker does not hold are re-sent. Redis is looked into (the
  queue list and the hash of delivered, unacknowledged messages, less those delivered to a worker
  that died before claiming them), so this works right after a restart; other brokers cannot be
  looked into, and their pending jobs are re-sent by age (older than the hard time limit).

Re-sending is safe: a delivery of a ``done`` job is skipped, so is one of a job another live
process is running (fresh heartbeat), and a result replaces candidates in one transaction. It
runs at worker start, every ``stale_check_interval`` seconds in each worker's main process (one
at a time on Redis: a lock), and on demand with ``featureloc jobs recover``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
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

# Redis transport's hash of delivered-but-unacknowledged messages and the sorted set of their
# delivery times (kombu's default names).
REDIS_UNACKED_KEY = "unacked"
REDIS_UNACKED_INDEX_KEY = "unacked_index"
# A pending job this young may be between its registration and its send (README: register, then
# send); its sender is still on it.
PENDING_GRACE = timedelta(seconds=2)
# How long one recoverer keeps the others off: short, so that a worker killed while holding it
# delays the next check by seconds. A longer recovery only risks a duplicate message, which the
# task skips.
RECOVERY_LOCK_SECONDS = 10.0


@dataclass
class RecoveryReport:
    requeued_running: list[str] = field(default_factory=list)
    resent_pending: list[str] = field(default_factory=list)
    still_queued: int = 0  # pending jobs whose message the broker still holds

    @property
    def total(self) -> int:
        return len(self.requeued_running) + len(self.resent_pending)


def _is_redis(settings: Settings) -> bool:
    return settings.broker_url.get_secret_value().startswith(("redis://", "rediss://"))


def message_job_id(raw: bytes | str) -> str | None:
    """The job id a raw Redis message carries: its first task argument (any sender's task id
    is its own business), or the task id when the body cannot be read."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an unacknowledged entry: [message, exchange, key]
            message = message[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        args = decoded.get("args") if isinstance(decoded, dict) else decoded[0]  # protocol 1, 2
        if args and isinstance(args[0], str):
            return args[0]
        return message.get("headers", {}).get("id")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def _queued_job_ids(celery: Celery, settings: Settings) -> set[str] | None:
    """Job ids with a message in the broker that a worker will still run; None when the broker
    cannot be looked into.

    A message delivered to a worker more than ``stale_after`` seconds ago whose job is still
    pending reached a worker that died before claiming it (a live one claims at once): it does
    not count, although Redis would give it back only after the visibility timeout.
    """
    if not _is_redis(settings):
        return None
    with celery.connection_for_write() as conn:
        client = conn.default_channel.client
        raw = client.lrange(settings.localise_queue, 0, -1)
        delivered = dict(client.zrange(REDIS_UNACKED_INDEX_KEY, 0, -1, withscores=True))
        unacked = client.hgetall(REDIS_UNACKED_KEY)
    cutoff = time.time() - settings.stale_after
    raw += [body for tag, body in unacked.items() if delivered.get(tag, cutoff + 1) > cutoff]
    return {j for j in map(message_job_id, raw) if j is not None}


@contextlib.contextmanager
def _one_recoverer(celery: Celery, settings: Settings, ttl: float) -> Iterator[bool]:
    """On Redis, a lock so that workers checking at once do not all re-send the same jobs."""
    if not _is_redis(settings):
        yield True
        return
    key = f"featureloc:recovery:{settings.localise_queue}"
    with celery.connection_for_write() as conn:
        client = conn.default_channel.client
        held = bool(client.set(key, "1", nx=True, px=max(int(ttl * 1000), 1000)))
        try:
            yield held
        finally:
            if held:
                client.delete(key)


def recover_jobs(
    settings: Settings | None = None,
    older_than: timedelta | None = None,
    celery: Celery | None = None,
    force: bool = False,
) -> RecoveryReport:
    """Re-send the messages of jobs that lost theirs (see the module docstring).

    ``older_than``: how long without a heartbeat makes a running job stale (default
    ``stale_after``), and on brokers that cannot be looked into, how old a pending job must be
    (default: the hard time limit). ``force``: run even while a worker's check holds the lock
    (a person asked for it).
    """
    settings = settings or get_settings()
    celery = celery or make_celery(settings)
    report = RecoveryReport()
    with _one_recoverer(celery, settings, ttl=RECOVERY_LOCK_SECONDS) as held:
        if not held and not force:
            return report  # another worker is recovering right now
        db = Database(settings.database_url.get_secret_value())
        _requeue_stale(db, celery, settings, older_than, report)
        _resend_unqueued(db, celery, settings, older_than, report)
    if report.total:
        log.warning(
            "recovered %d stale running and %d unqueued pending job(s)",
            len(report.requeued_running),
            len(report.resent_pending),
        )
    return report


def _requeue_stale(
    db: Database,
    celery: Celery,
    settings: Settings,
    older_than: timedelta | None,
    report: RecoveryReport,
) -> None:
    stale_after = older_than if older_than is not None else timedelta(seconds=settings.stale_after)
    with db.session() as s:
        for job in queries.find_stale_jobs(s, stale_after):
            queries.mark_pending(job)  # so the next check sees it queued, not stale
            send_job(celery, settings, job)  # inside the transaction: no reset without a message
            report.requeued_running.append(job.id)


def _resend_unqueued(
    db: Database,
    celery: Celery,
    settings: Settings,
    older_than: timedelta | None,
    report: RecoveryReport,
) -> None:
    queued = _queued_job_ids(celery, settings)
    if queued is None:  # cannot look: by age
        min_age = (
            older_than if older_than is not None else timedelta(seconds=settings.task_time_limit)
        )
    else:
        min_age = PENDING_GRACE
    with db.session() as s:
        for job in queries.find_old_pending_jobs(s, min_age):
            if job.id in report.requeued_running:
                continue
            if queued is not None and job.id in queued:
                report.still_queued += 1
                continue
            send_job(celery, settings, job)
            report.resent_pending.append(job.id)


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
