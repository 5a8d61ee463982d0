"""Recovery by heartbeat, with real workers on a private Redis and PostgreSQL: a whole worker
SIGKILLed mid-job has its job done elsewhere within a minute with the default settings, and a
job longer than the stale limit on a live worker is never sent twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from db import queries
from tests.support.faults import (
    JOB_OPTIONS,
    SLOW_SIFT,
    kill_tree,
    make_slow_scene,
    pool_children,
    query_images,
    stack,
    wait_running,
)
from workers.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A scene whose jobs take seconds (``SLOW_SIFT``)."""
    return make_slow_scene(tmp_path_factory.mktemp("heartbeat-scene"))


def _slow_query(scene: Path) -> bytes:
    return query_images(scene)[0].read_bytes()


def test_a_dead_workers_job_is_done_within_a_minute_by_default(tmp_path, scene, redis):
    defaults = Settings()
    assert defaults.stale_after + defaults.stale_check_interval <= 45, "the promise of the README"
    # The default recovery settings.
    with stack(tmp_path, scene, broker_url=redis.url, sift_conf=SLOW_SIFT) as st:
        workers = [st.worker("a").start(), st.worker("b").start()]
        client, db = st.client(), st.db()
        try:
            job_id = client.submit(_slow_query(scene), "tiny", JOB_OPTIONS)
            pid = int(wait_running(db, job_id).rsplit(":", 1)[1])
            (victim,) = [w for w in workers if pid in pool_children(w.proc.pid)]
            kill_tree(victim.proc.pid)
            killed_at = time.monotonic()

            result = client.wait(job_id, timeout=90)
            back_after = time.monotonic() - killed_at
            print(f"job done {back_after:.1f} s after its worker was killed")
            assert result.status == "done" and back_after < 60, back_after
            with db.session() as s:
                assert queries.get_job(s, job_id).attempts == 2, "run once more, not twice more"
        finally:
            for w in workers:
                w.stop()


def test_a_long_job_on_a_live_worker_is_not_sent_twice(tmp_path, scene, redis):
    """Heartbeats every 0.2 s, stale after 1 s, checks every 0.4 s; the job runs for several
    times that. The old rule (stale a fixed time after the start) would have re-sent it."""
    stale_after = 1.0
    fast = {"heartbeat_interval": "0.2", "stale_after": str(stale_after)}
    with stack(
        tmp_path,
        scene,
        broker_url=redis.url,
        sift_conf=SLOW_SIFT,
        stale_check_interval="0.4",
        **fast,
    ) as st:
        workers = [st.worker("a").start(), st.worker("b").start()]
        client, db = st.client(), st.db()
        try:
            job_id = client.submit(_slow_query(scene), "tiny", JOB_OPTIONS)
            result = client.wait(job_id, timeout=180)
            assert result.status == "done"
            ran = (result.finished_at - result.started_at).total_seconds()
            assert ran > 2 * stale_after, f"the job ({ran:.1f} s) must outlast the stale limit"
            with db.session() as s:
                assert queries.get_job(s, job_id).attempts == 1
            assert not any("recovered" in w.log() for w in workers), "nothing was re-sent"
        finally:
            for w in workers:
                w.stop()
