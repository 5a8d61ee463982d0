"""Real services for tests: a PostgreSQL schema of its own, a Celery worker process."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Generic, TypeVar

import pytest

from db.schemas import temporary_schema
from tests.support.process import WorkerProcess  # noqa: F401 - re-exported for the tests
from workers.settings import Settings

REDIS_URL = os.environ.get("FEATURELOC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "FEATURELOC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


T = TypeVar("T")


class ServicePool(Generic[T]):
    """Services by key (a database backend), each started on first use and all stopped when
    the pool closes: what a session fixture shares between the test files of one process.

    A session-scoped fixture parametrised by backend would instead stop and start its service
    at every test file under pytest-xdist's ``loadfile`` (each file runs its tests on one
    backend, then the other), and a stack costs 8-17 s to start."""

    def __init__(self, start: Callable[[str], AbstractContextManager[T]]) -> None:
        self._start = start
        self._started: dict[str, T] = {}
        self._running = ExitStack()

    def get(self, key: str) -> T:
        if key not in self._started:
            self._started[key] = self._running.enter_context(self._start(key))
        return self._started[key]

    def __enter__(self) -> ServicePool[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self._running.close()


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_redis() -> None:
    if not reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema, dropped afterwards; yields a URL whose search_path points at it."""
    if not reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    with temporary_schema(POSTGRES_URL) as url:
        yield url


def service_env(data_dir: Path, database_url: str, tag: str) -> dict[str, str]:
    """Environment for a worker and client that share nothing with other test runs."""
    env = os.environ.copy()
    env.update(
        FEATURELOC_DATA_DIR=str(data_dir),
        FEATURELOC_DATABASE_URL=database_url,
        FEATURELOC_BROKER_URL=REDIS_URL,
        FEATURELOC_LOCALISE_QUEUE=f"test-{tag}-localise",
        FEATURELOC_BUILD_QUEUE=f"test-{tag}-build",
        FEATURELOC_TORCH_THREADS="1",
    )
    return env


def service_settings(env: Mapping[str, str]) -> Settings:
    """The settings a worker started with ``env`` reads: the same ``FEATURELOC_*`` variables,
    for the client and the map builds of a test to share its data dir, database and queues."""
    prefix = "FEATURELOC_"
    values = {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    return Settings(**values)


def register_scene_map(
    settings: Settings, scene: Path, name: str = "scene", sift_conf: dict | None = None
) -> None:
    """The synthetic scene's references as an exhaustive SIFT map, recorded in the database:
    every reference is matched, so the service tests can check ranks and rows exactly."""
    from workers.maps import build_and_register

    build_and_register(
        settings,
        name,
        scene / "images",
        scene / "references.csv",
        "sift",
        extractor_conf=sift_conf,
        retriever="exhaustive",
    )


@contextmanager
def scene_service(
    backend: str, data: Path, scene: Path
) -> Iterator[tuple[Settings, WorkerProcess]]:
    """A worker process with the scene map registered, on a fresh ``backend`` database
    ("sqlite" in ``data`` or a "postgres" schema of its own), stopped afterwards."""
    from db.session import init_db

    require_redis()
    url = (
        postgres_schema()
        if backend == "postgres"
        else nullcontext(f"sqlite:///{data / 'featureloc.db'}")
    )
    with url as db_url:
        env = service_env(data, db_url, uuid.uuid4().hex[:8])
        settings = service_settings(env)
        init_db(db_url)
        register_scene_map(settings, scene)
        worker = WorkerProcess(env, data / "worker.log").start()
        try:
            yield settings, worker
        finally:
            worker.stop()
