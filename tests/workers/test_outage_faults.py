"""Outages against real services: Redis killed and restarted while jobs are queued and running,
PostgreSQL cut off from the worker. Nothing may be lost or doubled. (Kills of workers and pool
processes: tests/workers/test_faults.py; a file each so that `make test`'s timer-bound pass runs
them side by side.)

Each test runs its own ``redis-server`` (no persistence: a restart loses every message) and a
fresh PostgreSQL schema; the shared servers are never touched.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from tests.support.faults import (
    FAST_RECOVERY,
    JOB_OPTIONS,
    TcpProxy,
    duplicate_candidates,
    job_summary,
    make_tiny_scene,
    orphan_candidates,
    query_images,
    stack,
    variants,
    wait_until,
)
from tests.support.services import POSTGRES_URL, reachable
from workers.client import BrokerUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_tiny_scene(tmp_path_factory.mktemp("tiny-scene"))


def test_redis_restart_loses_no_job(tmp_path, scene, redis):
    """Redis SIGKILLed (no persistence) with jobs queued and one running, then restarted: the
    client gets a clear error meanwhile, the worker reconnects, and the stale check re-sends the
    jobs whose messages died with Redis. Every accepted job ends done."""
    images = variants(query_images(scene)[1].read_bytes(), 40)
    with stack(tmp_path, scene, broker_url=redis.url, **FAST_RECOVERY) as st:
        worker = st.worker().start()
        client, db = st.client(), st.db()
        try:
            accepted = [client.submit(img, "tiny", JOB_OPTIONS) for img in images[:30]]
            wait_until(lambda: job_summary(db).get("done", 0) >= 3, 60, "3 jobs done")
            redis.kill()

            t0 = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="broker .* is unavailable"):
                client.submit(images[30], "tiny", JOB_OPTIONS)
            assert time.monotonic() - t0 < 15, "the client must not hang on a dead broker"
            assert sum(job_summary(db).values()) == 30, "the refused job left no row"
            time.sleep(2)  # jobs in flight find the broker gone
            redis.start()  # same port, empty: every queued message is gone

            accepted.append(client.submit(images[30], "tiny", JOB_OPTIONS))  # submit again: fine
            results = client.wait_many(accepted, timeout=120)
            assert [r.status for r in results] == ["done"] * 31, job_summary(db)
            assert duplicate_candidates(db) == 0 and orphan_candidates(db) == 0
            assert "recovered" in worker.log(), "the stale check re-sent lost jobs"
            assert worker.proc.poll() is None
        finally:
            worker.stop()


def test_database_cut_off_then_back(tmp_path, scene, redis):
    """The worker reaches PostgreSQL through a proxy that is cut for 5 s while jobs run: tasks
    retry with backoff and then succeed; no job is left half-written."""
    if not reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running")
    proxy = TcpProxy(5432)
    images = variants(query_images(scene)[2].read_bytes(), 20)
    try:
        with stack(tmp_path, scene, broker_url=redis.url, **FAST_RECOVERY) as st:
            proxied = st.db_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
            assert proxied != st.db_url
            worker = st.worker(FEATURELOC_DATABASE_URL=proxied).start()
            client, db = st.client(), st.db()
            try:
                ids = [client.submit(img, "tiny", JOB_OPTIONS) for img in images[:10]]
                wait_until(lambda: job_summary(db).get("done", 0) >= 2, 60, "2 jobs done")
                proxy.cut()
                ids += [client.submit(img, "tiny", JOB_OPTIONS) for img in images[10:]]
                time.sleep(5)
                assert job_summary(db).get("done", 0) < 20, "the cut did not stop the worker"
                proxy.restore()

                results = client.wait_many(ids, timeout=120)
                assert [r.status for r in results] == ["done"] * 20, job_summary(db)
                assert "transient fault, retrying" in worker.log()
                assert duplicate_candidates(db) == 0 and orphan_candidates(db) == 0
                # Every variant decodes to the same image: every stored result is the same.
                shapes = {
                    (r.x, r.y, tuple(sorted((c.reference_id, c.inliers) for c in r.candidates)))
                    for r in results
                }
                assert len(shapes) == 1, "a retried job stored a different (partial) result"
            finally:
                worker.stop()
    finally:
        proxy.close()


def test_sqlite_lock_and_pg_disconnect_are_transient(tmp_path):
    """The errors the task retries on, produced for real: SQLite's "database is locked" and a
    PostgreSQL connection dropped mid-session both count as transient."""
    from workers.retry import is_transient

    path = tmp_path / "locked.db"
    holder = create_engine(f"sqlite:///{path}")
    waiter = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    with holder.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        conn.commit()
        conn.exec_driver_sql("BEGIN EXCLUSIVE")
        with (
            pytest.raises(OperationalError, match="database is locked") as locked,
            waiter.begin() as other,
        ):
            other.exec_driver_sql("INSERT INTO t VALUES (1)")
        conn.rollback()
    assert is_transient(locked.value)

    if not reachable("127.0.0.1", 5432):
        return
    proxy = TcpProxy(5432)
    try:
        url = POSTGRES_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            proxy.cut()
            with pytest.raises(DBAPIError) as dropped:
                conn.execute(text("SELECT 1"))
        assert is_transient(dropped.value), type(dropped.value)
        engine.dispose()
    finally:
        proxy.close()
