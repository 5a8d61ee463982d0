"""Service depth, through real Redis, real worker processes and PostgreSQL (SQLite if absent).

Two workers drain one queue with every job done once; a map built in chunks on the workers equals
the map built serially; builds resume, extend and survive a corrupt photo; resubmitting is
idempotent; a restarted worker serves what was queued; export, draw and Flower work.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from cli.synthetic import FOV_DEG
from core.camera import Camera
from core.draw import HEADER, MATCH_COLOUR, PANEL, figure_size
from core.mapbuild import build_map, read_positions_csv
from core.mapstore import MapStore
from db import build_queries
from db.models import Job, MapBuildChunk
from tests.support.faults import (
    JOB_OPTIONS,
    free_port,
    make_tiny_scene,
    pool_children,
    query_images,
    stack,
    variants,
    wait_until,
)
from tests.support.paths import REPO
from tests.support.services import reachable, require_redis
from workers.build import build_progress, submit_build

pytestmark = pytest.mark.integration

BACKEND = "postgres" if reachable("127.0.0.1", 5432) else "sqlite"


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_tiny_scene(tmp_path_factory.mktemp("depth-scene"), num_queries=4)


@pytest.fixture(scope="module")
def svc(tmp_path_factory, scene):
    """A stack (database, tiny map, queues of its own) with two single-process workers."""
    require_redis()
    with stack(tmp_path_factory.mktemp("depth"), scene, backend=BACKEND) as st:
        workers = [st.worker("w1").start(), st.worker("w2").start()]
        st.workers = workers
        try:
            yield st
        finally:
            for w in st.workers:
                w.stop()


def _cli(st, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**st.env, "COLUMNS": "200"},  # rich wraps tables at the terminal width
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait_build(st, build_id: str, timeout: float = 120):
    wait_until(
        lambda: build_progress(st.settings, build_id).status in ("done", "failed"),
        timeout,
        f"build {build_id}",
    )
    return build_progress(st.settings, build_id)


def _succeeded_task_ids(log: str, task: str) -> list[str]:
    return re.findall(rf"Task {re.escape(task)}\[([^\]]+)\] succeeded", log)


def test_two_workers_drain_100_jobs_each_exactly_once(svc):
    client = svc.client()
    query = query_images(svc.scene)[0].read_bytes()
    ids = client.submit_many(variants(query, 100), "tiny", JOB_OPTIONS)
    assert len(set(ids)) == 100
    results = client.wait_many(ids, timeout=240)
    assert [r.status for r in results] == ["done"] * 100, {r.error for r in results}

    with svc.db().session() as s:
        attempts = dict(s.execute(select(Job.id, Job.attempts).where(Job.id.in_(ids))).all())
    assert attempts == dict.fromkeys(ids, 1), "a job was claimed more than once"
    ran = [t for w in svc.workers for t in _succeeded_task_ids(w.log(), "featureloc.localise")]
    ran = [t for t in ran if t in set(ids)]
    assert sorted(ran) == sorted(ids), "each job's task ran exactly once across both workers"
    per_worker = {r.worker.split(":")[1] for r in results}
    assert len(per_worker) == 2, "both worker processes took jobs from the one queue"


def test_parallel_build_equals_serial_build(svc, tmp_path):
    scene = svc.scene
    plan = submit_build(
        svc.settings,
        svc.client().app,
        "par",
        scene / "images",
        scene / "references.csv",
        extractor="sift",
        retriever="exhaustive",
        chunk_size=3,
    )
    assert (plan.total, plan.skipped, plan.chunks) == (16, 0, 6)
    build = _wait_build(svc, plan.build_id)
    assert (build.status, build.added, build.processed, build.failed) == ("done", 16, 16, {})
    with svc.db().session() as s:
        chunks = list(s.scalars(select(MapBuildChunk).where(MapBuildChunk.build_id == build.id)))
    assert [c.status for c in chunks] == ["done"] * 6 and all(c.attempts == 1 for c in chunks)
    assert len({c.worker for c in chunks}) == 2, "both workers extracted chunks"

    serial_store = MapStore(tmp_path / "serial")
    entries = read_positions_csv(scene / "references.csv", scene / "images")
    build_map(serial_store, "par", entries, "sift")
    parallel = MapStore(svc.settings.maps_dir).open("par")
    serial = serial_store.open("par")
    assert len(list((parallel.path / "parts").glob("part-*.feat"))) == 6
    assert parallel.ids == serial.ids
    np.testing.assert_array_equal(parallel.positions, serial.positions)
    for a, b in zip(parallel.features, serial.features, strict=True):
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_array_equal(a.descriptors, b.descriptors)
        np.testing.assert_array_equal(a.scores, b.scores)
    maps = _cli(svc, "map", "list")
    assert re.search(r"par\s.*16", maps.stdout), maps.stdout

    # Re-running resumes: nothing left to extract, the build only re-registers the map. The
    # map has a camera now, so the finished build queues its pair frames on the build queue
    # (FEATURELOC_GEOMETRY_AFTER_BUILD, on by default).
    MapStore(svc.settings.maps_dir).set_camera("par", Camera(fov_x_deg=FOV_DEG))
    again = submit_build(
        svc.settings, svc.client().app, "par", scene / "images", scene / "references.csv"
    )
    assert (again.skipped, again.chunks) == (16, 0)
    assert _wait_build(svc, again.build_id).status == "done"
    assert _wait_frames(svc, "par", 16) == 16

    # Incremental: `map add --via-queue` extracts only the new photos; old parts stay untouched.
    before = {p.name: p.stat().st_mtime_ns for p in (parallel.path / "parts").glob("*.feat")}
    extra = tmp_path / "extra"
    (extra / "images").mkdir(parents=True)
    with (extra / "positions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "x", "y"])
        for i, q in enumerate(query_images(scene)):
            shutil.copy(q, extra / "images" / f"new_{i}.jpg")
            w.writerow([f"new_{i}", i, -i])
    out = _cli(
        svc,
        "map",
        "add",
        "par",
        "--images",
        str(extra / "images"),
        "--positions",
        str(extra / "positions.csv"),
        "--via-queue",
        "--chunk-size",
        "2",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 added, 0 already there, 0 failed" in out.stdout
    grown = MapStore(svc.settings.maps_dir).open("par")
    assert len(grown) == 20 and {f"new_{i}" for i in range(4)} <= set(grown.ids)
    after = {p.name: p.stat().st_mtime_ns for p in (grown.path / "parts").glob("*.feat")}
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 2
    assert _wait_frames(svc, "par", 20) == 20  # the extension's frames follow it


def _wait_frames(svc, name: str, count: int, timeout: float = 180) -> int:
    """References of map ``name`` with stored pair frames, once ``count`` or at the deadline."""
    frames = MapStore(svc.settings.maps_dir).open(name).pair_frames
    deadline = time.monotonic() + timeout
    while frames.count() < count and time.monotonic() < deadline:
        time.sleep(0.5)
        frames.refresh()
    return frames.count()


def test_a_corrupt_photo_fails_alone_and_the_map_stays_usable(svc, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(svc.scene / "images", images)
    bad = "ref_0001_2"
    (images / f"{bad}.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no photo at all" * 20)
    plan = submit_build(
        svc.settings,
        svc.client().app,
        "broken",
        images,
        svc.scene / "references.csv",
        extractor="sift",
        retriever="exhaustive",
        chunk_size=4,
    )
    build = _wait_build(svc, plan.build_id)
    assert build.status == "done" and build.added == 15
    assert list(build.failed) == [bad]
    assert "corrupt" in build.failed[bad] or "not an image" in build.failed[bad]
    listed = _cli(svc, "map", "builds", "--map", "broken", "--failures")
    assert listed.returncode == 0, listed.stderr
    assert plan.build_id in listed.stdout and "done" in listed.stdout
    assert "16/16" in listed.stdout and f"{bad}:" in listed.stdout

    client = svc.client()
    res = client.wait(client.submit(query_images(svc.scene)[1], "broken"), timeout=120)
    assert res.status == "done" and res.candidates
    assert bad not in {c.reference_id for c in res.candidates}


def test_resubmission_is_idempotent(svc):
    client = svc.client()
    photo = query_images(svc.scene)[2]
    first = client.submit(photo, "tiny", {"top_k": 3})
    done = client.wait(first, timeout=120)
    again = [client.submit(photo.read_bytes(), "tiny", {"top_k": 3}) for _ in range(3)]
    assert again == [first] * 3
    time.sleep(1.0)  # a duplicate message, had one been sent, would have been taken by now
    with svc.db().session() as s:
        job = s.get(Job, first)
        assert (job.status, job.attempts, job.finished_at) == ("done", 1, done.finished_at)


def test_export_csv_and_json(svc, tmp_path):
    client = svc.client()
    photos = [p.read_bytes() for p in query_images(svc.scene)]
    client.wait_many(client.submit_many(photos, "tiny", {"top_k": 4}), timeout=120)
    ids = {r.id for r in client.list_jobs(map_name="tiny", status="done", limit=1000)}
    out = _cli(svc, "jobs", "export", "--format", "json", "--map", "tiny", "--status", "done")
    assert out.returncode == 0, out.stderr
    jobs = json.loads(out.stdout)
    assert {j["id"] for j in jobs} == ids and all(j["status"] == "done" for j in jobs)
    exported = next(j for j in jobs if j["x"] is not None and j["candidates"])
    one = client.result(exported["id"])
    assert exported["candidates"] == [c.to_row() for c in one.candidates]

    path = tmp_path / "jobs.csv"
    out = _cli(svc, "jobs", "export", "--format", "csv", "--map", "tiny", "--output", str(path))
    assert out.returncode == 0, out.stderr
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows if r["status"] == "done"} == ids
    row = next(r for r in rows if r["id"] == one.id)
    best = max(one.candidates, key=lambda c: c.inliers)
    assert (row["best_reference"], int(row["best_inliers"])) == (best.reference_id, best.inliers)
    assert float(row["x"]) == pytest.approx(one.x) and int(row["candidates"]) == len(one.candidates)
    assert row["heading"] == ("" if one.heading is None else str(one.heading))
    since = _cli(svc, "jobs", "export", "--format", "json", "--since", "2000-01-01T00:00:00")
    assert len(json.loads(since.stdout)) >= len(ids)
    future = _cli(svc, "jobs", "export", "--format", "json", "--since", "2999-01-01T00:00:00")
    assert json.loads(future.stdout) == []


def test_draw_writes_the_query_beside_its_best_references(svc, tmp_path):
    client = svc.client()
    photo = query_images(svc.scene)[3]
    res = client.wait(client.submit(photo, "tiny"), timeout=120)
    assert res.status == "done" and len(res.candidates) >= 2
    png = tmp_path / "fig" / "job.png"
    out = _cli(
        svc,
        "draw",
        res.id,
        "--output",
        str(png),
        "--images",
        str(svc.scene / "images"),
        "--top",
        "2",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    figure = cv2.imread(str(png))
    assert (figure.shape[1], figure.shape[0]) == figure_size(2)
    assert "2 reference(s)" in out.stdout
    # The matches are drawn: the match colour fills many pixels of the pictures.
    rows = np.arange(figure.shape[0]) % (HEADER + PANEL[1]) >= HEADER  # pictures, not captions
    lines = np.all(np.abs(figure.astype(int) - MATCH_COLOUR) < 40, axis=2)
    assert lines[rows].sum() > 200, "no match lines drawn"
    # A single photo's job has no second photo to draw (a photo set's --photo N does).
    other = _cli(svc, "draw", res.id, "--output", str(png), "--photo", "2")
    assert other.returncode == 1 and "has 1 photo(s)" in other.stderr, other.stderr


def test_flower_requires_auth_and_serves_metrics(svc):
    refused = _cli(svc, "flower", "--port", str(free_port()), timeout=30)
    assert refused.returncode == 1 and "FLOWER_BASIC_AUTH" in refused.stderr

    port = free_port()
    log = (svc.data / "flower.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "flower", "--port", str(port), "--address", "127.0.0.1"],
        env={**svc.env, "FLOWER_BASIC_AUTH": "admin:s3cret"},
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: reachable("127.0.0.1", port), 60, "flower listening")
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{url}/workers", timeout=10)
        assert denied.value.code == 401
        token = base64.b64encode(b"admin:s3cret").decode()
        req = urllib.request.Request(f"{url}/workers", headers={"Authorization": f"Basic {token}"})
        assert urllib.request.urlopen(req, timeout=10).status == 200
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        assert "flower_" in metrics
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_a_restarted_worker_serves_what_was_queued(svc):
    for w in svc.workers:
        w.stop()
    client = svc.client()
    photo = query_images(svc.scene)[0].read_bytes()
    ids = client.submit_many(variants(photo, 200)[100:106], "tiny", JOB_OPTIONS)
    time.sleep(1.0)
    assert {client.result(j).status for j in ids} == {"pending"}, "no worker is running"
    fresh = svc.worker("w3").start()
    svc.workers = [fresh]
    results = client.wait_many(ids, timeout=120)
    assert [r.status for r in results] == ["done"] * 6
    pool = {str(pid) for pid in pool_children(fresh.proc.pid)}
    assert {r.worker.split(":")[1] for r in results} <= pool, "served by the new worker"
    with svc.db().session() as s:
        assert set(s.scalars(select(Job.attempts).where(Job.id.in_(ids)))) == {1}
    with svc.db().session() as s:
        assert build_queries.active_build(s, "par") is None
