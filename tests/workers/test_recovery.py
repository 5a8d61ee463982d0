"""Stale job recovery (workers/recovery.py) on a SQLite database and an in-memory broker."""

from __future__ import annotations

from datetime import timedelta

from core.settings import Settings
from db import queries
from db.session import Database, init_db
from db.types import utcnow
from workers.celery_app import LOCALISE_TASK, make_celery
from workers.recovery import recover_jobs

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
