"""Faults against real services: workers SIGKILLed mid-job, Redis killed and restarted while
jobs are queued and running, PostgreSQL cut off from the worker. Nothing may be lost or doubled.

Each test runs its own ``redis-server`` (no persistence: a restart loses every message) and a
fresh PostgreSQL schema; the shared servers are never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from db import queries
from tests.support.faults import (
    JOB_OPTIONS,
    SLOW_SIFT,
    PrivateRedis,
    TcpProxy,
    duplicate_candidates,
    job_summary,
    kill_tree,
    make_slow_scene,
    make_tiny_scene,
    orphan_candidates,
    pool_children,
    query_images,
    stack,
    variants,
    wait_running,
    wait_until,
)
from tests.support.paths import REPO
from tests.support.services import POSTGRES_URL, reachable
from workers.client import BrokerUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Short limits and heartbeats so that stale detection happens within seconds.
FAST_RECOVERY = {
    "task_time_limit": "6",
    "task_soft_time_limit": "5",
    "stale_check_interval": "1",
    "heartbeat_interval": "0.5",
    "stale_after": "3",
}
# The slow scene's job takes about 5 s on an idle 2-core machine (more under load): limits well
# above it, so that what ends the job is the kill under test, never the time limit.
SLOW_JOB_RECOVERY = {**FAST_RECOVERY, "task_time_limit": "120", "task_soft_time_limit": "100"}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_tiny_scene(tmp_path_factory.mktemp("tiny-scene"))


@pytest.fixture
def redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_scene(tmp_path_factory) -> Path:
    """A scene whose jobs take seconds (``SLOW_SIFT``): a window to kill the worker in."""
    return make_slow_scene(tmp_path_factory.mktemp("slow-scene"))


def test_pool_process_killed_mid_job_is_redelivered_once(tmp_path, slow_scene, redis):
    scene = slow_scene
    with stack(
        tmp_path, scene, broker_url=redis.url, sift_conf=SLOW_SIFT, **SLOW_JOB_RECOVERY
    ) as st:
        worker = st.worker().start()
        client, db = st.client(), st.db()
        try:
            job_id = client.submit(query_images(scene)[0].read_bytes(), "tiny", JOB_OPTIONS)
            victim = wait_running(db, job_id)
            os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)

            result = client.wait(job_id, timeout=60)
            assert result.status == "done", result.error
            assert result.worker != victim, "a new pool process ran the redelivery"
            assert result.candidates
            with db.session() as s:
                assert queries.get_job(s, job_id).attempts == 2
            assert duplicate_candidates(db) == 0
            assert worker.proc.poll() is None, "the worker's main process survived"
            assert "WorkerLostError" in worker.log() or "SIGKILL" in worker.log()
        finally:
            worker.stop()


def test_whole_worker_killed_then_recovered(tmp_path, slow_scene, redis):
    """SIGKILL of the main process too: nobody rejects the message, it waits unacknowledged in
    Redis until the visibility timeout. ``featureloc jobs recover`` re-sends it at once."""
    scene = slow_scene
    with stack(
        tmp_path, scene, broker_url=redis.url, sift_conf=SLOW_SIFT, **SLOW_JOB_RECOVERY
    ) as st:
        worker = st.worker("first").start()
        client, db = st.client(), st.db()
        job_id = client.submit(query_images(scene)[0].read_bytes(), "tiny", JOB_OPTIONS)
        victim = wait_running(db, job_id)
        kill_tree(worker.proc.pid)
        worker.stop()
        assert job_summary(db) == {"running": 1}, "the job is stuck running"

        recover = subprocess.run(
            [sys.executable, "-m", "cli.main", "jobs", "recover", "--older-than", "0"],
            env=st.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert recover.returncode == 0, recover.stderr
        assert "re-queued 1 stale running job" in recover.stdout
        assert job_summary(db) == {"pending": 1}

        second = st.worker("second").start()
        try:
            result = client.wait(job_id, timeout=60)
            assert result.status == "done" and result.worker != victim
            with db.session() as s:
                assert queries.get_job(s, job_id).attempts == 2
            assert duplicate_candidates(db) == 0 and orphan_candidates(db) == 0
        finally:
            second.stop()


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


def test_pool_children_helper_sees_the_pool(tmp_path, scene, redis):
    """The kill helpers act on real pool processes (guards the tests above against a no-op)."""
    with stack(tmp_path, scene, backend="sqlite", broker_url=redis.url) as st:
        worker = st.worker(concurrency=2).start()
        try:
            assert len(pool_children(worker.proc.pid)) == 2
        finally:
            worker.stop()


def _big_references(scene: Path, out: Path, count: int) -> Path:
    """The first ``count`` references of the scene upscaled to 2000x1500 (about a second of
    SIFT each: a build chunk lasts long enough to be killed in), with their positions CSV."""
    import csv

    with (scene / "references.csv").open() as f:
        rows = list(csv.DictReader(f))[:count]
    (out / "images").mkdir(parents=True)
    for r in rows:
        image = cv2.imread(str(scene / "images" / f"{r['id']}.jpg"))
        cv2.imwrite(str(out / "images" / f"{r['id']}.jpg"), cv2.resize(image, (2000, 1500)))
    with (out / "references.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "x", "y"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("id", "x", "y")} for r in rows)
    return out


def test_worker_killed_mid_build_chunk_resumes_to_a_whole_map(tmp_path, scene, redis):
    """The pool process extracting a chunk is SIGKILLed after another chunk's part is written:
    the chunk is redelivered and rewrites its own part, and the map holds every reference
    exactly once."""
    from sqlalchemy import select

    from core.flatfile import read_arrays
    from core.mapstore import MapStore, part_files
    from db.models import MapBuildChunk
    from workers.build import build_progress, submit_build

    refs = _big_references(scene, tmp_path / "big", count=6)
    with stack(tmp_path, scene, backend="sqlite", broker_url=redis.url, **FAST_RECOVERY) as st:
        worker = st.worker().start()
        db = st.db()
        try:
            plan = submit_build(
                st.settings,
                st.client().app,
                "big",
                refs / "images",
                refs / "references.csv",
                extractor="sift",
                chunk_size=2,
            )
            parts = st.settings.maps_dir / "big" / "parts"
            seen: dict[str, tuple[int, str]] = {}

            def running_after_a_part() -> bool:
                if not (parts.is_dir() and part_files(parts)):
                    return False
                with db.session() as s:
                    stmt = select(MapBuildChunk).where(
                        MapBuildChunk.build_id == plan.build_id, MapBuildChunk.status == "running"
                    )
                    chunk = s.scalars(stmt).first()
                    if chunk is not None and chunk.worker:
                        seen["chunk"] = (chunk.index, chunk.worker)
                return "chunk" in seen

            wait_until(running_after_a_part, 120, "a chunk running after a written part", 0.02)
            victim, victim_worker = seen["chunk"]
            os.kill(int(victim_worker.rsplit(":", 1)[1]), signal.SIGKILL)

            wait_until(
                lambda: build_progress(st.settings, plan.build_id).status in ("done", "failed"),
                180,
                f"build {plan.build_id}",
            )
            build = build_progress(st.settings, plan.build_id)
        finally:
            worker.stop()
    assert (build.status, build.added, build.failed) == ("done", 6, {}), build.error
    with db.session() as s:
        stmt = select(MapBuildChunk).where(MapBuildChunk.build_id == plan.build_id)
        attempts = {c.index: c.attempts for c in s.scalars(stmt)}
    assert attempts[victim] == 2, "the killed chunk ran again"
    stored = [str(i) for p in part_files(parts) for i in read_arrays(p)["ids"]]
    expected = sorted(e.stem for e in (refs / "images").glob("*.jpg"))
    assert sorted(stored) == expected, "no reference missing or stored twice"
    assert MapStore(st.settings.maps_dir).open("big").ids == expected
