"""A real API server process, a real worker, real Redis, on SQLite and on PostgreSQL.

One stack per backend for the whole tests/api package: the synthetic scene's map (SIFT, as in
tests/test_service.py) with its photos recorded, a worker, ``featureloc serve`` on a free loopback
port, and API keys made through ``db.api_keys`` (the code behind ``featureloc apikey``).
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.mapstore import MapStore
from core.settings import Settings
from db import api_keys, queries
from db.models import Job
from db.session import Database, init_db
from tests.services import (
    WorkerProcess,
    postgres_schema,
    require_redis,
    service_env,
    service_settings,
)
from workers.maps import build_and_register
from workers.process import ApiServerProcess

# Small limits, so that the hostile uploads stay small and fast.
MAX_IMAGE_BYTES = 1_000_000
MAX_IMAGE_PIXELS = 2_000_000
OTHER_MAP = "elsewhere"  # registered in the database only: for keys limited to another map


@dataclass
class ApiStack:
    backend: str
    url: str
    settings: Settings
    server: ApiServerProcess
    worker: WorkerProcess
    scene: Path
    token: str  # a key for every map
    other_token: str  # a key for OTHER_MAP only

    def client(self, token: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def new_key(self, name: str | None = None, **kwargs) -> str:
        with self.db().session() as s:
            return api_keys.create_key(s, name or f"k-{uuid.uuid4().hex[:8]}", **kwargs)[1]

    def db(self) -> Database:
        return Database(self.settings.database_url.get_secret_value())

    def job_count(self) -> int:
        with self.db().session() as s:
            return s.query(Job).count()

    def query_photos(self) -> list[Path]:
        with (self.scene / "queries.csv").open() as f:
            return [self.scene / "images" / f"{r['id']}.jpg" for r in csv.DictReader(f)]


@contextmanager
def _database_url(backend: str, data: Path) -> Iterator[str]:
    if backend == "postgres":
        with postgres_schema() as url:
            yield url
    else:
        with nullcontext(f"sqlite:///{data / 'featureloc.db'}") as url:
            yield url


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres")])
def api_stack(request, tmp_path_factory, scene) -> Iterator[ApiStack]:
    require_redis()
    data = tmp_path_factory.mktemp(f"api-{request.param}")
    with _database_url(request.param, data) as db_url:
        env = service_env(data, db_url, uuid.uuid4().hex[:8])
        env.update(
            FEATURELOC_MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES),
            FEATURELOC_MAX_IMAGE_PIXELS=str(MAX_IMAGE_PIXELS),
        )
        settings = service_settings(env)
        init_db(db_url)
        build_and_register(settings, "scene", scene / "images", scene / "references.csv", "sift")
        MapStore(settings.maps_dir).set_images_dir("scene", scene / "images")
        db = Database(db_url)
        with db.session() as s:
            queries.upsert_map(s, OTHER_MAP, {"name": "sift"}, {"name": "exhaustive"}, [])
            token = api_keys.create_key(s, "all-maps")[1]
            other = api_keys.create_key(s, "other-only", maps=[OTHER_MAP])[1]
        worker = WorkerProcess(env, data / "worker.log").start()
        server = ApiServerProcess(env, data / "api.log")
        try:
            server.start()
            yield ApiStack(request.param, server.url, settings, server, worker, scene, token, other)
        finally:
            server.stop()
            worker.stop()
