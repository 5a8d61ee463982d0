"""A CPU worker that preloads its map before the pool forks: the pool's processes share it.

A real ``featureloc worker`` (Celery prefork, 2 processes) with ``FEATURELOC_PRELOAD_MAPS``
serves the scene's queries. The map must be loaded exactly once, by the main process, and
every job served by the forked processes that inherited it.
"""

from __future__ import annotations

import csv
import re
import uuid

import pytest

from db.session import init_db
from tests.support.services import (
    WorkerProcess,
    register_scene_map,
    require_redis,
    service_env,
    service_settings,
)
from workers.client import Client

pytestmark = pytest.mark.integration


def test_a_preloaded_map_is_loaded_once_and_serves_every_process(scene, tmp_path):
    require_redis()
    env = service_env(tmp_path, f"sqlite:///{tmp_path / 'featureloc.db'}", uuid.uuid4().hex[:8])
    env.update(FEATURELOC_PRELOAD_MAPS="scene, no-such-map", FEATURELOC_DEVICE="cpu")
    settings = service_settings(env)
    assert settings.preload_maps == ["scene", "no-such-map"]
    init_db(settings.database_url.get_secret_value())
    register_scene_map(settings, scene)
    worker = WorkerProcess(env, tmp_path / "worker.log", concurrency=2).start()
    try:
        with (scene / "queries.csv").open() as f:
            ids = [r["id"] for r in csv.DictReader(f)]
        client = Client(settings)
        jobs = [client.submit(scene / "images" / f"{q}.jpg", "scene") for q in ids]
        results = client.wait_many(jobs, timeout=300)
        log = worker.log()
    finally:
        worker.stop()
    assert [r.status for r in results] == ["done"] * len(ids), [r.error for r in results]
    loads = re.findall(r"process (\d+) loaded map 'scene'", log)
    assert len(loads) == 1, log[-3000:]  # the main process only: the pool inherited it
    served_by = {r.worker.rsplit(":", 1)[1] for r in results}
    assert loads[0] not in served_by  # jobs ran in the forked processes, not the main one
    assert "preloaded maps ['scene']" in log  # the unknown map was left out, not fatal
    assert "map 'no-such-map' not preloaded" in log
