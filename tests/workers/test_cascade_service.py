"""The accurate profile, the map's held-out fit and its geometry through a real worker: Redis,
a Celery worker process, SQLite; real XFeat, ALIKED and LightGlue on the synthetic scene."""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid

import cv2
import pytest

from cli.synthetic import FOV_DEG
from core.camera import Camera
from core.draw import figure_size
from core.heldout import HELDOUT_FILE, read_rows
from core.mapstore import MapStore
from db import queries
from db.session import Database, init_db
from tests.core.test_placement import _random_views
from tests.support.services import WorkerProcess, require_redis, service_env, service_settings
from workers.celery_app import make_celery
from workers.client import Client
from workers.figures import FIGURE_REFERENCES, job_figure
from workers.fit import send_fit
from workers.geometry import send_geometry
from workers.maps import build_and_register

pytestmark = pytest.mark.integration

FIT_STEP = 2  # held-out positions per fit task: a fit in steps, on few positions


@pytest.fixture(scope="module")
def service(tmp_path_factory, scene):
    require_redis()
    data = tmp_path_factory.mktemp("cascade")
    db_url = f"sqlite:///{data / 'featureloc.db'}"
    env = service_env(data, db_url, uuid.uuid4().hex[:8])
    env["FEATURELOC_PROFILE"] = "accurate"  # this worker's jobs cascade unless they say not
    env["FEATURELOC_FIT_STEP_POSITIONS"] = str(FIT_STEP)
    settings = service_settings(env)
    init_db(db_url)
    build_and_register(
        settings, "scene", scene / "images", scene / "references.csv", "xfeat", retriever="vlad"
    )
    store = MapStore(settings.maps_dir)
    store.set_images_dir("scene", scene / "images")  # the fine stage and the fit find photos
    from core import defaults, registry

    ident = registry.create_extractor(
        defaults.FINE_EXTRACTOR, {"max_keypoints": 128, "resize_max": 320}
    ).identity()  # a small fine set: the test is about the plumbing, not the figures
    store.set_fine_extractor("scene", ident)
    worker = WorkerProcess(env, data / "worker.log").start()
    try:
        yield settings, Client(settings), store
    finally:
        worker.stop()


def test_a_worker_cascades_by_its_own_default_and_stores_both_stages(service, scene) -> None:
    settings, client, _ = service
    photo = next((scene / "images").glob("query_0000.*"))
    always = {"fine_conf": {"escalate_below": 1.0, "places": 2, "views": 1}}
    job = client.wait(client.submit(photo, "scene", always), timeout=240)
    assert job.status == "done", job.error
    stages = [c.stage for c in job.candidates]
    assert stages.count("fine") in (1, 2) and stages.count("coarse") >= 2
    assert "fine" in job.timings and "fine" in (job.method or "")
    # What ran is recorded: the worker's default profile, a raw score on a map never fitted.
    assert job.options["profile"] == job.profile_used == "accurate"
    assert job.calibrated is False and job.fit_id is None
    # A job that asks for the fast profile is not cascaded, whatever the worker's default.
    fast = client.wait(client.submit(photo, "scene", {"profile": "fast"}), timeout=240)
    assert fast.status == "done" and {c.stage for c in fast.candidates} == {"coarse"}


def test_the_figure_of_a_cascaded_job_shows_what_each_stage_counted(service, scene) -> None:
    """Drawn from what the job kept, with no model or map loaded: the fine stage's views first
    (it answered), each reference once, each with the inliers and matches its row records."""
    _, client, store = service
    photo = next((scene / "images").glob("query_0001.*"))
    always = {"fine_conf": {"escalate_below": 1.0, "places": 2, "views": 1}}
    job = client.wait(client.submit(photo, "scene", always), timeout=240)
    assert job.status == "done" and "fine" in (job.method or "").split("+"), job
    figure = job_figure(client, job.id, store.images_dir("scene"), FIGURE_REFERENCES)
    recorded = {(c.stage, c.reference_id): c for c in job.candidates}
    drawn = [(m.stage, m.reference_id) for m in figure.drawn]
    assert len({rid for _, rid in drawn}) == len(drawn) >= 2
    for m in figure.drawn:
        row = recorded[(m.stage, m.reference_id)]
        assert (len(m), m.tentative) == (row.inliers, row.tentative_matches)
    fine = {key for key in recorded if key[0] == "fine"}
    assert set(drawn[: len(fine)]) == fine
    assert (figure.image.shape[1], figure.image.shape[0]) == figure_size(len(drawn))


def test_the_map_fits_itself_on_the_build_queue_in_resumable_steps(service, scene) -> None:
    settings, client, store = service
    queries = FIT_STEP + 1  # two steps: the task sends itself once more
    send_fit(make_celery(settings), settings, "scene", queries)
    path = store.path("scene") / "training.json"
    deadline = time.monotonic() + 420
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(1)
    assert path.is_file(), "the fit did not finish"
    record = json.loads(path.read_text())
    assert record["heldout_queries"] == queries
    rows = read_rows(store.path("scene") / HELDOUT_FILE)
    assert len(rows) == queries and len({r.reference_id for r in rows}) == queries
    assert 0.0 <= record["escalate_below"] <= 1.0
    assert set(record["calibration"]) == {"coarse", "fine"}
    # The running worker answers the next job with the new fit, with no restart.
    photo = next((scene / "images").glob("query_0001.*"))
    job = client.wait(client.submit(photo, "scene", {"profile": "fast"}), timeout=240)
    assert job.status == "done", job.error
    fit_id = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert job.fit_id == fit_id and job.calibrated is True and job.profile_used == "fast"


def test_the_map_builds_its_geometry_on_the_build_queue(service, scene) -> None:
    """workers/geometry.py through the worker: the map's geometry step runs on the build queue
    and sends itself until every reference has its geometry (core/geometry.py); the worker
    then places queries by one pose against it and the job keeps the heading and inliers."""
    settings, client, store = service
    store.set_camera("scene", Camera(fov_x_deg=FOV_DEG))  # the geometry needs the camera
    assert store.open("scene").geometry.count() == 0
    send_geometry(make_celery(settings), settings, "scene", pose=True)
    deadline = time.monotonic() + 420
    ref_map = store.open("scene")
    while ref_map.geometry.count() < len(ref_map) and time.monotonic() < deadline:
        time.sleep(1)
        ref_map.geometry.refresh()
    assert ref_map.geometry.count() == len(ref_map), "the geometry did not finish"
    ref_map.pair_frames.refresh()
    assert ref_map.pair_frames.count() == len(ref_map)
    headings = [g.heading for i in range(len(ref_map)) if (g := ref_map.geometry[i]) is not None]
    assert sum(h == h for h in headings) >= 0.6 * len(ref_map)  # most have a heading (not NaN)
    # The worker sees the new geometry parts (a new map version) and places by pose.
    # Random views of the scene (tests/core/test_placement.py): the scene's 8 query photos may
    # all face references the geometry gave no points (about half of them on this scene), while
    # the pose applies to about half of random views (tests/core/test_geometry.py).
    options = {"profile": "fast", "placement_conf": {"method": "pose-only"}}
    photos = [cv2.imencode(".jpg", image)[1].tobytes() for image, _ in _random_views(12)]
    jobs = client.wait_many([client.submit(p, "scene", options) for p in photos], timeout=300)
    posed = [j for j in jobs if (j.method or "").endswith("+pose")]
    assert len(posed) >= 2, [j.method for j in jobs]
    with Database(settings.database_url.get_secret_value()).session() as s:
        rows = [queries.get_job(s, j.id) for j in posed]
    for row in rows:
        assert row is not None and row.heading is not None and -math.pi <= row.heading <= math.pi
        assert row.pose_inliers is not None and row.pose_inliers >= 12  # PoseConfig.min_inliers
    # Placement by pairs (the default method) gives a heading too, kept with the job.
    plain = client.wait_many([client.submit(p, "scene", {"profile": "fast"}) for p in photos[:6]])
    placed = [j for j in plain if (j.method or "").endswith("+placement")]
    assert placed, [j.method for j in plain]
    assert all(j.heading is not None and -math.pi <= j.heading <= math.pi for j in placed)
