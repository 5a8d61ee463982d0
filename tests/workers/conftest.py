"""Worker stacks the service test files share (tests/support/services.ServicePool)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from tests.support.faults import PrivateRedis
from tests.support.services import ServicePool, WorkerProcess, scene_service
from workers.settings import Settings

SceneService = tuple[Settings, WorkerProcess]


@pytest.fixture(scope="session")
def scene_services(tmp_path_factory, scene: Path) -> Iterator[ServicePool[SceneService]]:
    """A worker with the synthetic scene's map per backend ("sqlite", "postgres"), started on
    first use and kept for the session: tests submit jobs of their own and count relatively."""
    start = partial(_scene_service, tmp_path_factory=tmp_path_factory, scene=scene)
    with ServicePool(start) as pool:
        yield pool


@contextmanager
def _scene_service(backend: str, tmp_path_factory, scene: Path) -> Iterator[SceneService]:
    with scene_service(backend, tmp_path_factory.mktemp(f"svc-{backend}"), scene) as started:
        yield started


@pytest.fixture
def redis(tmp_path) -> Iterator[PrivateRedis]:
    """A ``redis-server`` of the test's own (no persistence), to kill and restart at will."""
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()
