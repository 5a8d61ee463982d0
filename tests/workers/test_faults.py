"""Kills against real services: pool processes and whole workers SIGKILLed mid-job or mid-build.
Nothing may be lost or doubled. (Redis and PostgreSQL outages: tests/workers/test_outage_faults.py.)

Each test runs its own ``redis-server`` (no persistence: a restart loses every message) and a
fresh PostgreSQL schema; the shared servers are never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from db import queries
from tests.support.faults import (
    FAST_RECOVERY,
    JOB_OPTIONS,
    SLOW_SIFT,
    big_references,
    build_ended,
    duplicate_candidates,
    job_summary,
    kill_tree,
    make_slow_scene,
    make_tiny_scene,
    orphan_candidates,
    pool_children,
    query_images,
    stack,
    submit_big_build,
    wait_running,
    wait_until,
)
from tests.support.paths import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The slow scene's job takes about 5 s on an idle 2-core machine (more under load): limits well
# above it, so that what ends the job is the kill under test, never the time limit.
SLOW_JOB_RECOVERY = {**FAST_RECOVERY, "task_time_limit": "120", "task_soft_time_limit": "100"}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_tiny_scene(tmp_path_factory.mktemp("tiny-scene"))


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


def test_pool_children_helper_sees_the_pool(tmp_path, scene, redis):
    """The kill helpers act on real pool processes (guards the tests above against a no-op)."""
    with stack(tmp_path, scene, backend="sqlite", broker_url=redis.url) as st:
        worker = st.worker(concurrency=2).start()
        try:
            assert len(pool_children(worker.proc.pid)) == 2
        finally:
            worker.stop()


def test_worker_killed_mid_build_chunk_resumes_to_a_whole_map(tmp_path, scene, redis):
    """The pool process extracting a chunk is SIGKILLed after another chunk's part is written:
    the chunk is redelivered and rewrites its own part, and the map holds every reference
    exactly once."""
    from sqlalchemy import select

    from core.flatfile import read_arrays
    from core.mapstore import MapStore, part_files
    from db.models import MapBuildChunk

    refs = big_references(scene, tmp_path / "big", count=6)
    # Limits well above a chunk's time: what ends the chunk is the kill, never a time limit
    # (a chunk took over 6 s with the timer-bound tests running side by side).
    with stack(tmp_path, scene, backend="sqlite", broker_url=redis.url, **SLOW_JOB_RECOVERY) as st:
        worker = st.worker().start()
        db = st.db()
        try:
            plan = submit_big_build(st, refs, chunk_size=2)
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

            build = build_ended(st, plan.build_id, 180)
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
