"""A real API server process, a real worker, real Redis, on SQLite and on PostgreSQL.

One stack per backend for the whole tests/api package (``stack`` of tests/support/faults.py: the
tiny synthetic scene's map "tiny", SIFT, queues of its own), with the map's photos recorded, a
worker, ``featureloc serve`` on a free loopback port, and API keys made through ``db.api_keys``
(the code behind ``featureloc apikey``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest

from core.mapstore import MapStore
from db import api_keys, queries
from db.models import Job
from tests.api.browser import Browser, chromium_path
from tests.support.faults import Stack, make_tiny_scene, query_images, stack
from tests.support.process import ApiServerProcess
from tests.support.services import ServicePool, WorkerProcess, require_redis

MAP = "tiny"
# Small limits, so that the hostile uploads stay small and fast.
MAX_IMAGE_BYTES = 1_000_000
MAX_IMAGE_PIXELS = 2_000_000
OTHER_MAP = "elsewhere"  # registered in the database only: for keys limited to another map


@dataclass
class ApiStack:
    backend: str
    stack: Stack
    server: ApiServerProcess
    worker: WorkerProcess
    token: str  # a key for every map
    other_token: str  # a key for OTHER_MAP only

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def scene(self) -> Path:
        return self.stack.scene

    def client(self, token: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def new_key(self, name: str | None = None, **kwargs) -> str:
        with self.stack.db().session() as s:
            return api_keys.create_key(s, name or f"k-{uuid.uuid4().hex[:8]}", **kwargs)[1]

    def job_count(self) -> int:
        with self.stack.db().session() as s:
            return s.query(Job).count()

    def query_photos(self) -> list[Path]:
        return query_images(self.scene)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for page tests (tests/api/browser.py)."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's package)")
    b = Browser(executable)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    return make_tiny_scene(tmp_path_factory.mktemp("api-scene"), num_queries=4)


@pytest.fixture(scope="session")
def api_stacks(tmp_path_factory, tiny_scene) -> Iterator[ServicePool[ApiStack]]:
    """One stack per backend, started on first use and kept for the session."""
    start = partial(_api_stack, tmp_path_factory=tmp_path_factory, scene=tiny_scene)
    with ServicePool(start) as pool:
        yield pool


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api_stack(request, api_stacks) -> ApiStack:
    """The session's stack on each backend (``api_stacks``)."""
    require_redis()
    return api_stacks.get(request.param)


@contextmanager
def _api_stack(backend: str, tmp_path_factory, scene: Path) -> Iterator[ApiStack]:
    limits = {"max_image_bytes": MAX_IMAGE_BYTES, "max_image_pixels": MAX_IMAGE_PIXELS}
    data = tmp_path_factory.mktemp(f"api-{backend}")
    with stack(data, scene, backend=backend, **limits) as st:
        MapStore(st.settings.maps_dir).set_images_dir(MAP, scene / "images")
        with st.db().session() as s:
            queries.upsert_map(s, OTHER_MAP, {"name": "sift"}, {"name": "exhaustive"}, [])
            token = api_keys.create_key(s, "all-maps")[1]
            other = api_keys.create_key(s, "other-only", maps=[OTHER_MAP])[1]
        worker = st.worker().start()
        server = ApiServerProcess(st.env, data / "api.log")
        try:
            server.start()
            yield ApiStack(backend, st, server, worker, token, other)
        finally:
            server.stop()
            worker.stop()
