"""Maps on disk that a new database does not know yet, and API keys that name maps or turn their
rate limit off: the real CLI in a subprocess on a SQLite file, a map built with SIFT."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest

from api.problems import Problem
from api.ratelimit import RateLimiter
from db import api_keys
from db.session import Database
from tests.support.process import run_cli
from tests.support.services import REDIS_URL, require_redis

REFERENCES = 4


@pytest.fixture(scope="module")
def map_on_disk(tmp_path_factory, scene) -> tuple[dict[str, str], Path]:
    """A data dir whose maps folder holds map 'found' (4 references) and whose database has
    never been created: a map copied in, or a database started afresh."""
    from core.mapbuild import build_map, read_positions_csv
    from core.mapstore import MapStore

    data = tmp_path_factory.mktemp("found")
    entries = read_positions_csv(scene / "references.csv", scene / "images")[:REFERENCES]
    build_map(MapStore(data / "maps"), "found", entries, "sift", retriever_name="exhaustive")
    env = {**os.environ, "FEATURELOC_DATA_DIR": str(data)}
    return env, data


def _db(data: Path) -> Database:
    return Database(f"sqlite:///{(data / 'featureloc.db').resolve()}")


def test_map_list_records_the_maps_of_the_map_store(map_on_disk):
    env, _ = map_on_disk
    listed = run_cli(env, "map", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (found,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (found["name"], found["references"]) == ("found", REFERENCES)
    assert found["extractor"]["name"] == "sift" and "recorded" in listed.stderr
    again = run_cli(env, "map", "list")
    assert "found" in again.stdout and "recorded" not in again.stderr  # once only


def test_apikey_create_refuses_an_unknown_map_and_finds_one_on_disk(map_on_disk):
    env, data = map_on_disk
    unknown = run_cli(env, "apikey", "create", "typo", "--map", "nosuchmap")
    said = " ".join(unknown.stderr.split())
    assert unknown.returncode == 1 and "unknown map(s) 'nosuchmap'" in said, said
    assert "found" in said  # the maps there are
    scoped = run_cli(env, "apikey", "create", f"scoped-{uuid.uuid4().hex[:6]}", "--map", "found")
    assert scoped.returncode == 0, scoped.stderr
    with _db(data).session() as s:
        assert [k.maps for k in api_keys.list_keys(s)] == [["found"]]  # no key for the typo


def test_a_key_with_rate_limit_0_is_never_limited(tmp_path):
    require_redis()
    env = {**os.environ, "FEATURELOC_DATA_DIR": str(tmp_path)}
    created = run_cli(env, "apikey", "create", "unlimited", "--rate-limit", "0")
    assert created.returncode == 0, created.stderr
    refused = run_cli(env, "apikey", "create", "negative", "--rate-limit", "-1")
    assert refused.returncode == 1 and "rate limit" in refused.stderr
    listed = [
        json.loads(line) for line in run_cli(env, "apikey", "list", "--json").stdout.splitlines()
    ]
    assert [(k["name"], k["rate_limit"]) for k in listed] == [("unlimited", 0)]
    with _db(tmp_path).session() as s:
        (key,) = api_keys.list_keys(s)

    async def hits(key_limit: int | None, token_hash: str) -> int:
        limiter = RateLimiter(REDIS_URL, default_limit=2)  # the server's default: 2 a minute
        served = 0
        try:
            for _ in range(4):
                await limiter.hit(token_hash, key_limit)
                served += 1
        except Problem as exc:
            assert exc.status_code == 429
        finally:
            await limiter.close()
        return served

    assert asyncio.run(hits(key.rate_limit, key.token_hash)) == 4
    assert asyncio.run(hits(None, uuid.uuid4().hex)) == 2  # a key without its own: the default


def test_demo_keeps_its_data_under_the_data_dir(tmp_path, monkeypatch):
    from cli.demo import demo_workdir
    from workers.settings import get_settings

    monkeypatch.setenv("FEATURELOC_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert demo_workdir(None) == tmp_path / "demo"
        assert demo_workdir(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    finally:
        get_settings.cache_clear()
