"""The durable path for services that send ``featureloc.localise`` by name (README): record the
job, then send it. Redis is restarted between the send and the pick-up, once without persistence
(every message lost) and once with an append-only file (docker-compose.yml): registered jobs are
never lost; jobs sent without registration survive only a persistent Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Job
from tests.support.faults import (
    PrivateRedis,
    make_tiny_scene,
    query_images,
    send_by_name,
    stack,
    variants,
    wait_until,
    write_blob,
)
from tests.support.process import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


OPTIONS = {"top_k": 5}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_tiny_scene(tmp_path_factory.mktemp("durable-scene"), num_queries=1)


def _rows(st) -> int:
    with st.db().session() as s:
        return s.scalar(select(func.count()).select_from(Job))


def _statuses(st, job_ids: list[str]) -> set[str | None]:
    """Status of each job; None for one without a row (sent without registration, not yet
    picked up)."""
    with st.db().session() as s:
        found = dict(s.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids))).all())
    return {found.get(j) for j in job_ids}


def _broker_holds(redis_client, queue: str) -> int:
    return redis_client.llen(queue) + redis_client.hlen("unacked")


@pytest.mark.parametrize("persistent", [False, True], ids=["no-persistence", "append-only"])
def test_registered_jobs_survive_a_redis_restart(tmp_path, scene, persistent):
    import redis as redis_lib

    server = PrivateRedis(tmp_path / "redis", persistent=persistent).start()
    try:
        with stack(tmp_path / "svc", scene, broker_url=server.url) as st:
            url, queue = server.url, st.settings.localise_queue
            keys = [
                write_blob(st.settings.blob_dir, img)
                for img in variants(query_images(scene)[0].read_bytes(), 6)
            ]
            registered = [f"svc-reg-{i}" for i in range(3)]
            cli = run_cli(
                st.env, "jobs", "register", registered[0], "--map", "tiny",
                "--image-key", keys[0], "--option", "top_k=5",
            )  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            for job_id, key in zip(registered[1:], keys[1:3], strict=True):
                assert st.client().register(job_id, "tiny", key, OPTIONS)
            for job_id, key in zip(registered, keys[:3], strict=True):
                send_by_name(url, queue, [job_id, "tiny", key, OPTIONS])
            unregistered = [f"svc-raw-{i}" for i in range(3)]
            for job_id, key in zip(unregistered, keys[3:], strict=True):
                send_by_name(url, queue, [job_id, "tiny", key, OPTIONS])
            assert _rows(st) == 3, "no worker yet: only the registered jobs have rows"

            server.restart()
            broker = redis_lib.Redis.from_url(url)
            assert _broker_holds(broker, queue) == (6 if persistent else 0)

            if not persistent:  # right after the restart, without --older-than
                recover = run_cli(st.env, "jobs", "recover")
                assert recover.returncode == 0, recover.stderr
                assert "re-sent 3 pending job(s) without a message" in recover.stdout

            worker = st.worker().start()
            try:
                expected = registered + (unregistered if persistent else [])
                wait_until(lambda: _statuses(st, expected) == {"done"}, 120, "the jobs done")
                wait_until(lambda: _broker_holds(broker, queue) == 0, 30, "an empty broker")
                assert _rows(st) == len(expected), "lost: the unregistered jobs, and only those"
                with st.db().session() as s:
                    attempts = s.scalars(select(Job.attempts)).all()
                assert set(attempts) == {1}, "no job ran twice"
            finally:
                worker.stop()
            broker.close()
    finally:
        server.stop()
