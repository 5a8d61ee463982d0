"""The job id covers the profile, the option that decides which stages run: a client resolves
its default (``FEATURELOC_PROFILE``) before it makes the id, so the same photo sent under two
defaults is two jobs, each recording the profile it asked for. Real Redis and SQLite."""

from __future__ import annotations

import uuid

import pytest
import redis

from db.session import init_db
from tests.support.services import REDIS_URL, require_redis, service_env, service_settings
from workers.client import Client

pytestmark = pytest.mark.integration


def test_the_job_id_covers_the_default_profile(scene, tmp_path) -> None:
    require_redis()
    db_url = f"sqlite:///{tmp_path / 'fl.db'}"
    init_db(db_url)
    env = service_env(tmp_path, db_url, uuid.uuid4().hex[:8])
    plain = Client(service_settings(env))  # no default: core.defaults.DEFAULT_PROFILE
    accurate = Client(service_settings({**env, "FEATURELOC_PROFILE": "accurate"}))
    photo = next((scene / "images").glob("query_0000.*"))
    try:
        a = plain.submit(photo, "scene")
        b = accurate.submit(photo, "scene")
        assert a != b, "two computations must not share one job"
        assert plain.result(a).options == {"profile": "fast"}
        assert accurate.result(b).options == {"profile": "accurate"}
        # A profile the job names is the job's, whatever the client's default.
        assert plain.submit(photo, "scene", {"profile": "accurate"}) == b
        assert accurate.submit(photo, "scene", {"profile": "fast"}) == a
    finally:  # no worker consumes this test's queue
        redis.Redis.from_url(REDIS_URL).delete(plain.settings.localise_queue)
