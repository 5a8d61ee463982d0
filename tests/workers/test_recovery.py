"""Stale job recovery (workers/recovery.py) on a SQLite database and an in-memory broker."""

from __future__ import annotations

import os
from datetime import timedelta

from db import queries
from db.session import Database, init_db
from db.types import utcnow
from workers.celery_app import LOCALISE_TASK, make_celery
from workers.client import send_job
from workers.recovery import recover_jobs
from workers.settings import Settings

HOUR_AGO = timedelta(hours=1)


def _sent(app, queue: str) -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in ``queue``, taken off it."""
    out = []
    with app.connection_for_read() as conn, conn.SimpleQueue(queue) as q:
        while True:
            try:
                message = q.get(block=False)
            except q.Empty:
                return out
            out.append((message.headers["task"], message.decode()[0]))
            message.ack()


def test_stale_running_and_unsent_pending_jobs_are_sent_again(sqlite_url, tmp_path):
    settings = Settings(
        data_dir=tmp_path, broker_url="memory://", database_url=sqlite_url,
        localise_queue=f"recovery-{tmp_path.name}",
    )  # fmt: skip
    init_db(sqlite_url)
    db = Database(sqlite_url)
    with db.session() as s:
        for job_id in ("stale", "old", "fresh", "done"):
            queries.create_job(s, job_id, "m", f"img-{job_id}", {"top_k": 5})
        stale = queries.claim_job(s, "stale", "lost-worker")
        stale.started_at = stale.heartbeat_at = utcnow() - 2 * HOUR_AGO  # its heartbeat stopped
        queries.get_job(s, "old").created_at = utcnow() - 2 * HOUR_AGO
        queries.claim_job(s, "done", "w")
        queries.save_result(
            s, "done", x=0, y=0, confidence=0, localised=False, timings={}, matcher=None,
            worker="w", candidates=[],
        )  # fmt: skip
        queries.get_job(s, "done").created_at = utcnow() - 2 * HOUR_AGO
    app = make_celery(settings)

    report = recover_jobs(settings, older_than=HOUR_AGO, celery=app)

    assert (report.requeued_running, report.resent_pending) == (["stale"], ["old"])
    with db.session() as s:
        statuses = {j: queries.get_job(s, j).status for j in ("stale", "old", "fresh", "done")}
    assert statuses == {"stale": "pending", "old": "pending", "fresh": "pending", "done": "done"}
    sent = _sent(app, settings.localise_queue)
    assert sorted(sent) == [
        (LOCALISE_TASK, ["old", "m", "img-old", {"top_k": 5}]),
        (LOCALISE_TASK, ["stale", "m", "img-stale", {"top_k": 5}]),
    ]
    # No job is running stale any more. A broker other than Redis cannot be looked into, so the
    # old pending job is sent again by its age alone (the task skips a duplicate delivery).
    again = recover_jobs(settings, older_than=HOUR_AGO, celery=app)
    assert (again.requeued_running, again.resent_pending) == ([], ["old"])


def test_on_redis_pending_jobs_are_resent_only_when_their_message_is_gone(sqlite_url, tmp_path):
    """A private Redis holds: one featureloc message, one sent by name by another service (its
    own task id), one delivered to a worker that died before claiming its job long ago, one
    delivered a moment ago. The fifth job has no message: only it and the dead worker's are
    re-sent, at once (no age needed), and a second check re-sends nothing."""
    import json
    import time as clock

    from tests.support.faults import PrivateRedis, send_by_name

    redis = PrivateRedis(tmp_path / "redis").start()
    try:
        settings = Settings(
            data_dir=tmp_path, broker_url=redis.url, database_url=sqlite_url,
            localise_queue="recovery-redis", stale_after=30,
        )  # fmt: skip
        init_db(sqlite_url)
        db = Database(sqlite_url)
        ids = ["own", "by-name", "dead-delivery", "live-delivery", "lost"]
        with db.session() as s:
            for job_id in ids:
                queries.create_job(s, job_id, "m", f"img-{job_id}", {})
                queries.get_job(s, job_id).created_at = utcnow() - timedelta(seconds=5)
        app = make_celery(settings)
        with app.connection_for_write() as conn:
            client = conn.default_channel.client
            for job_id, age in (("dead-delivery", 3600), ("live-delivery", 1)):
                send_by_name(redis.url, "recovery-redis", [job_id, "m", f"img-{job_id}", {}])
                raw = client.rpop("recovery-redis")  # as kombu delivers: off the list ...
                tag = f"tag-{job_id}"  # ... into the unacknowledged hash, with its time
                client.hset("unacked", tag, json.dumps([json.loads(raw), "", "recovery-redis"]))
                client.zadd("unacked_index", {tag: clock.time() - age})
        with db.session() as s:
            send_job(app, settings, queries.get_job(s, "own"))
        send_by_name(redis.url, "recovery-redis", ["by-name", "m", "img-by-name", {}])

        report = recover_jobs(settings, celery=app)
        assert sorted(report.resent_pending) == ["dead-delivery", "lost"]
        assert report.still_queued == 3
        again = recover_jobs(settings, celery=app)
        assert again.resent_pending == [] and again.still_queued == 5
    finally:
        redis.stop()


def test_a_job_whose_worker_still_beats_is_never_requeued_whatever_the_age(sqlite_url, tmp_path):
    """``featureloc jobs recover --older-than 0`` once re-queued a job a live worker was running
    (and so ran it twice). With age 0 every running job is past the age; only those whose worker
    is gone go back: one beating on this host (a real heartbeat thread) and one on another host
    that beat a moment ago stay running; one whose process on this host is gone (fresh beat or
    not) and one on another host silent for many heartbeat intervals are re-queued."""
    import socket
    import subprocess
    import sys
    import time

    from workers.heartbeat import Heartbeat
    from workers.recovery import LIVE_BEATS

    settings = Settings(
        data_dir=tmp_path, broker_url="memory://", database_url=sqlite_url,
        localise_queue=f"recovery-{tmp_path.name}", heartbeat_interval=0.2,
    )  # fmt: skip
    init_db(sqlite_url)
    db = Database(sqlite_url)
    host = socket.gethostname()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    holders = {
        "beating": f"{host}:{os.getpid()}",
        "fresh-elsewhere": "other-host:7",
        "process-gone": f"{host}:{gone.stdout.strip()}",
        "silent-elsewhere": "other-host:8",
    }
    with db.session() as s:
        for job_id, worker in holders.items():
            queries.create_job(s, job_id, "m", f"img-{job_id}", {})
            queries.claim_job(s, job_id, worker)
        silent = queries.get_job(s, "silent-elsewhere")
        silent.heartbeat_at = utcnow() - 2 * LIVE_BEATS * timedelta(seconds=0.2)
    app = make_celery(settings)
    with Heartbeat(db, "beating", holders["beating"], interval=0.2):
        time.sleep(0.5)  # older than the age asked for: the heartbeat alone keeps it
        with db.session() as s:
            queries.get_job(s, "fresh-elsewhere").heartbeat_at = utcnow()
        report = recover_jobs(settings, older_than=timedelta(0), celery=app, on_demand=True)

    assert sorted(report.requeued_running) == ["process-gone", "silent-elsewhere"]
    assert report.still_running == 2
    with db.session() as s:
        statuses = {j: queries.get_job(s, j).status for j in holders}
    assert statuses == {
        "beating": "running",
        "fresh-elsewhere": "running",
        "process-gone": "pending",
        "silent-elsewhere": "pending",
    }
    assert sorted(args[0] for _, args in _sent(app, settings.localise_queue)) == [
        "process-gone",
        "silent-elsewhere",
    ]
