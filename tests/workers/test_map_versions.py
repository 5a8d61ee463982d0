"""Map versions in object storage (moto's S3 server on loopback, not a mocked boto3): publish,
pull, verify, switch; a killed download; two worker "hosts" serving a map extended mid-load."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from core.mapstore import MapStore, Reference, write_part
from core.types import Features
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, s3_client
from workers.mapversions import VERSION_FILE, MapVersionError, MapVersions, map_files

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def versions(s3_endpoint) -> MapVersions:
    bucket = f"maps-{uuid.uuid4().hex[:12]}"
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=bucket)
    return MapVersions(client, bucket, "maps")


def _synthetic_map(root: Path, refs: int, parts: int = 1) -> MapStore:
    rng = np.random.default_rng(0)
    store = MapStore(root)
    path = store.create("m", {"name": "sift", "conf": {}}, {"name": "exhaustive", "conf": {}})
    items = [
        (
            Reference(f"r{i:04d}", i, 0),
            Features(
                rng.uniform(0, 99, (50, 2)).astype(np.float32),
                rng.normal(size=(50, 128)).astype(np.float32),
                np.ones(50, np.float32),
                (640, 480),
            ),
        )
        for i in range(refs)
    ]
    for k in range(parts):
        write_part(path, items[k::parts])
    return store


def _objects(v: MapVersions) -> list[str]:
    pages = v.client.get_paginator("list_objects_v2").paginate(Bucket=v.bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_publish_pull_extend_and_switch(versions, tmp_path):
    store = _synthetic_map(tmp_path / "build", 6)
    v1 = versions.publish(store.path("m"), "m")
    assert versions.latest("m") == v1 and versions.publish(store.path("m"), "m") == v1
    first = versions.pull("m", v1, tmp_path / "cache")
    assert map_files(first) == map_files(store.path("m"))
    uploaded = len(_objects(versions))

    rng = np.random.default_rng(1)
    feats = Features(
        rng.uniform(0, 9, (5, 2)).astype(np.float32),
        rng.normal(size=(5, 128)),
        np.ones(5, np.float32),
        (640, 480),
    )
    write_part(store.path("m"), [(Reference("added", 1, 1), feats)])
    v2 = versions.publish(store.path("m"), "m")
    assert v2 != v1 and versions.manifest("m", v2)["parent"] == v1
    # Only the new part and the new manifest/version objects went up: parts are shared.
    assert len(_objects(versions)) == uploaded + 2
    second = versions.pull("m", v2, tmp_path / "cache")
    old_part = next(p for p in map_files(first) if p.startswith("parts/"))
    assert (first / old_part).stat().st_ino == (second / old_part).stat().st_ino  # hard link
    from core.mapstore import ReferenceMap

    assert len(ReferenceMap.load(first)) == 6 and len(ReferenceMap.load(second)) == 7


def test_a_corrupt_object_is_refused_and_nothing_half_written_stays(versions, tmp_path):
    store = _synthetic_map(tmp_path / "build", 4)
    v1 = versions.publish(store.path("m"), "m")
    sha = versions.manifest("m", v1)["files"]["manifest.json"]["sha256"]
    versions.client.put_object(Bucket=versions.bucket, Key=f"maps/m/objects/{sha}", Body=b"{}")
    with pytest.raises(MapVersionError, match="checksum"):
        versions.pull("m", v1, tmp_path / "cache")
    assert list((tmp_path / "cache" / "m").iterdir()) == []
    with pytest.raises(MapVersionError, match="no version"):
        versions.pull("m", "0" * 24, tmp_path / "cache")


_PULL = """
import sys
from workers.mapversions import MapVersions
import boto3
client = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                      aws_access_key_id="k", aws_secret_access_key="s")
MapVersions(client, sys.argv[2], "maps").pull("m", sys.argv[3], sys.argv[4])
"""


def test_a_download_killed_midway_leaves_no_version_and_the_next_pull_completes(
    versions, s3_endpoint, tmp_path
):
    store = _synthetic_map(tmp_path / "build", 300, parts=150)
    v1 = versions.publish(store.path("m"), "m")
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PULL, s3_endpoint, versions.bucket, v1, str(cache)], cwd=REPO
    )
    deadline = time.monotonic() + 60
    while not list((cache / "m").glob(".*.tmp/parts/*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the pull ended before it could be interrupted"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cache / "m" / v1).exists(), "a killed download must not appear as a version"
    assert list((cache / "m").glob(".*.tmp")), "the abandoned download is only a temporary dir"
    path = versions.pull("m", v1, cache)
    assert (path / VERSION_FILE).is_file()
    from core.mapstore import ReferenceMap

    assert len(ReferenceMap.load(path)) == 300


@pytest.mark.integration
def test_two_hosts_serve_a_published_map_extended_mid_load(s3_endpoint, versions, scene, tmp_path):
    """Two worker processes, each with its own data directory (two hosts), share only Redis,
    the database and the bucket. Half the jobs run on version 1; the map is then extended and
    republished; the rest run on version 2. Every job is done once and records its version."""
    from sqlalchemy import select

    from db.models import Job
    from db.session import Database, init_db
    from tests.support.services import WorkerProcess, require_redis, service_env, service_settings
    from workers.client import Client
    from workers.maps import build_and_register

    require_redis()
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    tag = uuid.uuid4().hex[:8]
    s3 = dict(
        FEATURELOC_BLOB_BACKEND="s3",
        FEATURELOC_MAP_BACKEND="s3",
        FEATURELOC_S3_BUCKET=versions.bucket,
        FEATURELOC_S3_ENDPOINT_URL=s3_endpoint,
        FEATURELOC_S3_ACCESS_KEY_ID=ACCESS_KEY,
        FEATURELOC_S3_SECRET_ACCESS_KEY=SECRET_KEY,
        FEATURELOC_MAP_REFRESH_SECONDS="0",
    )
    envs = {h: {**service_env(tmp_path / h, db_url, tag), **s3} for h in ("builder", "a", "b")}
    builder = service_settings(envs["builder"])
    init_db(db_url)
    with (scene / "references.csv").open() as f:
        rows = list(csv.DictReader(f))
    first_csv, all_csv = tmp_path / "first.csv", scene / "references.csv"
    with first_csv.open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "x", "y"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("id", "x", "y")} for r in rows[: len(rows) // 2])
    build_and_register(
        builder, "scene", scene / "images", first_csv, "sift", retriever="exhaustive"
    )
    v1 = versions.latest("scene")
    with (scene / "queries.csv").open() as f:
        queries = list(csv.DictReader(f))[:4]
    photos = [(scene / "images" / f"{q['id']}.jpg").read_bytes() for q in queries]

    workers = [WorkerProcess(envs[h], tmp_path / f"{h}.log").start() for h in ("a", "b")]
    try:
        client = Client(builder)
        early = [client.submit(p, "scene", {"top_k": k}) for p in photos for k in (5, 6)]
        client.wait_many(early[:4], timeout=180)
        build_and_register(
            builder, "scene", scene / "images", all_csv, "sift", retriever="exhaustive"
        )  # extend
        v2 = versions.latest("scene")
        late = [client.submit(p, "scene", {"top_k": k}) for p in photos for k in (7,)]
        results = client.wait_many(early + late, timeout=300)
    finally:
        for w in workers:
            w.stop()
    assert v2 != v1
    logs = "\n".join(w.log()[-1500:] for w in workers)
    assert all(r.status == "done" for r in results), ([r.error for r in results], logs)
    by_id = {r.id: r for r in results}
    assert {by_id[j].map_version for j in early[:4]} == {v1}
    assert {by_id[j].map_version for j in late} == {v2}
    assert {r.map_version for r in results} <= {v1, v2}
    with Database(db_url).session() as s:
        jobs = list(s.scalars(select(Job)))
    assert len(jobs) == len(early) + len(late) and all(j.attempts == 1 for j in jobs)
    assert len({j.worker for j in jobs}) == 2, "both hosts served jobs"
    for host in ("a", "b"):  # each host pulled complete, verified versions only
        cached = tmp_path / host / "map-cache" / "scene"
        assert all(
            (d / VERSION_FILE).is_file() for d in cached.iterdir() if not d.name.startswith(".")
        )
