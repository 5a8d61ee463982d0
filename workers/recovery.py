"""Recovery: no accepted job may stay ``pending`` or ``running`` forever.

A job's message can be lost without anyone noticing: Redis restarted without persistence (queued
and unacknowledged messages gone), or a whole worker was killed (its unacknowledged message comes
back only after the broker's visibility timeout, which is long). The database still has the row,
so the row is the truth and the message is re-sent from it:

- ``running`` jobs whose heartbeat (workers/heartbeat.py) stopped ``stale_after`` seconds ago
  lost their worker: they are set back to ``pending`` and re-sent. A long job on a live worker
  keeps its heartbeat fresh and is left alone, whatever age is asked for (``older_than`` 0
  included): a job that beat within ``LIVE_BEATS`` heartbeat intervals is re-sent only when its
  process is known dead (on this host, gone from the process table);
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
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from db import queries
from db.models import Job
from db.session import Database
from db.types import utcnow
from workers.celery_app import make_celery
from workers.client import send_job
from workers.heartbeat import holder_alive
from workers.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Redis transport's hash of delivered-but-unacknowledged messages and the sorted set of their
# delivery times (kombu's default names).
REDIS_UNACKED_KEY = "unacked"
REDIS_UNACKED_INDEX_KEY = "unacked_index"
# The task id in a raw message's headers (``"root_id"``/``"parent_id"`` do not match).
_TASK_ID = re.compile(rb'"id": ?"([^"]+)"')
# A pending job this young may be between its registration and its send (README: register, then
# send): the periodic checks leave it to its sender (a duplicate would be skipped, but needless).
PENDING_GRACE = timedelta(seconds=2)
# How long one recoverer keeps the others off: short, so that a worker killed while holding it
# delays the next check by seconds. A longer recovery only risks a duplicate message, which the
# task skips.
RECOVERY_LOCK_SECONDS = 10.0
# A running job that beat within this many heartbeat intervals has a live worker: a beat may come
# late (a busy database), but not by two whole intervals.
LIVE_BEATS = 3


@dataclass
class RecoveryReport:
    requeued_running: list[str] = field(default_factory=list)
    resent_pending: list[str] = field(default_factory=list)
    still_queued: int = 0  # pending jobs whose message the broker still holds
    still_running: int = 0  # running jobs past ``older_than`` whose worker still beats

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


def _queued_job_ids(celery: Celery, settings: Settings, candidates: set[str]) -> set[str] | None:
    """Which of ``candidates`` (job ids) have a message in the broker that a worker will still
    run; None when the broker cannot be looked into.

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
    # Cheap first: featureloc's own messages carry the job id as their task id. Only what is
    # left is decoded (other senders' messages: the job id is their first argument).
    found: set[str] = set()
    undecoded = []
    for message in raw:
        task_id = _TASK_ID.search(message)
        if task_id and task_id.group(1).decode(errors="replace") in candidates:
            found.add(task_id.group(1).decode())
        else:
            undecoded.append(message)
    if candidates - found:
        found |= {j for j in map(message_job_id, undecoded) if j in candidates}
    return found


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
    on_demand: bool = False,
) -> RecoveryReport:
    """Re-send the messages of jobs that lost theirs (see the module docstring).

    ``older_than``: how long without a heartbeat makes a running job stale (default
    ``stale_after``), and on brokers that cannot be looked into, how old a pending job must be
    (default: the hard time limit). ``on_demand``: a person asked for it (``featureloc jobs
    recover``): it runs even while a worker's check holds the lock, and re-sends pending jobs
    however young.
    """
    settings = settings or get_settings()
    celery = celery or make_celery(settings)
    report = RecoveryReport()
    with _one_recoverer(celery, settings, ttl=RECOVERY_LOCK_SECONDS) as held:
        if not held and not on_demand:
            return report  # another worker is recovering right now
        db = Database(settings.database_url.get_secret_value())
        send = functools.partial(send_job, celery, settings)
        default_stale = timedelta(seconds=settings.stale_after)
        stale_after = older_than if older_than is not None else default_stale
        live_beat = timedelta(seconds=LIVE_BEATS * settings.heartbeat_interval)
        _requeue_stale(db, send, stale_after, live_beat, report)
        if _is_redis(settings):
            pending_age = timedelta(0) if on_demand else PENDING_GRACE
        else:  # the broker cannot be looked into: by age
            pending_age = (
                older_than
                if older_than is not None
                else timedelta(seconds=settings.task_time_limit)
            )
        queued = functools.partial(_queued_job_ids, celery, settings)
        _resend_unqueued(db, send, pending_age, queued, report)
    if report.total:
        log.warning(
            "recovered %d stale running and %d unqueued pending job(s)",
            len(report.requeued_running),
            len(report.resent_pending),
        )
    return report


def _requeue_stale(
    db: Database,
    send: Callable[[Job], None],
    stale_after: timedelta,
    live_beat: timedelta,
    report: RecoveryReport,
) -> None:
    with db.session() as s:
        beaten_since = utcnow() - live_beat
        for job in queries.find_stale_jobs(s, stale_after):
            if _still_held(job, beaten_since):
                report.still_running += 1
                continue
            queries.mark_pending(job)  # so the next check sees it queued, not stale
            send(job)  # inside the transaction: no reset without a message
            report.requeued_running.append(job.id)


def _still_held(job: Job, beaten_since: datetime) -> bool:
    """Whether the job's worker is alive: it beat since ``beaten_since`` and its process is not
    known dead. Re-sending such a job would set it pending while it runs, and run it twice."""
    last_beat = job.heartbeat_at or job.started_at
    if last_beat is None or last_beat < beaten_since:
        return False
    return holder_alive(job.worker)


def _resend_unqueued(
    db: Database,
    send: Callable[[Job], None],
    min_age: timedelta,
    queued_of: Callable[[set[str]], set[str] | None],
    report: RecoveryReport,
) -> None:
    """Pending jobs older than ``min_age`` whose message ``queued_of`` does not find (None: it
    cannot look, every one is re-sent)."""
    with db.session() as s:
        candidates = set(queries.old_pending_job_ids(s, min_age)) - set(report.requeued_running)
    queued = queued_of(candidates) if candidates else set()
    if queued is not None:
        report.still_queued += len(queued)
        candidates -= queued
    if not candidates:
        return
    with db.session() as s:
        for job in queries.find_old_pending_jobs(s, min_age, ids=candidates):
            send(job)
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
