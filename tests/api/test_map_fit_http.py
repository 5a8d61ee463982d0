"""What a job and a map say about the fit over HTTP: which profile ran, whether the confidence
is calibrated and by which fit; a map's fine set and fit. A second map of the tiny scene in the
shared stack (real server, worker, Redis, database), given a fine set and fitted mid-test."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from cli.synthetic import FOV_DEG
from core.camera import Camera
from core.heldout import fit_map
from core.mapbuild import add_fine_features, map_photos, read_positions_csv
from core.mapstore import MapStore
from db import queries
from db.models import Job
from tests.support.services import register_scene_map

pytestmark = pytest.mark.integration

FITTED = "tiny-fitted"


def _job(http, photo, options: dict) -> dict:
    files = {"photo": (photo.name, photo.read_bytes(), "image/jpeg")}
    answer = http.post(
        f"/v1/maps/{FITTED}/jobs", files=files, data={"options": json.dumps(options)}
    )
    assert answer.status_code == 202, answer.text
    done = http.get(answer.headers["location"], params={"wait": 120}).json()
    assert done["status"] == "done", done
    return done


@pytest.fixture
def fitted_map(api_stack) -> Iterator[MapStore]:
    """Map FITTED, gone afterwards with its jobs: the other tests count the stack's jobs."""
    settings = api_stack.stack.settings
    register_scene_map(settings, api_stack.scene, FITTED)
    store = MapStore(settings.maps_dir)
    try:
        yield store
    finally:
        with api_stack.stack.db().session() as s:
            for job in s.scalars(select(Job).where(Job.map_name == FITTED)):
                s.delete(job)
            s.delete(queries.get_map(s, FITTED))
        shutil.rmtree(store.path(FITTED))


def test_jobs_and_the_map_say_which_profile_and_fit_answered(api_stack, fitted_map) -> None:
    store, scene = fitted_map, api_stack.scene
    photo = api_stack.query_photos()[2]
    with api_stack.client() as http:
        before = http.get(f"/v1/maps/{FITTED}").json()
        assert before["fine_set"] is None and before["fit"] is None
        assert before["camera"] is None and before["geometry"] is None  # nothing to place with
        asked = _job(http, photo, {"profile": "accurate"})
    # Accurate was asked of a map with no fine set: it ran as fast, and says so.
    assert asked["profile_used"] == "fast" and "has no fine set" in asked["profile_note"]
    assert asked["calibrated"] is False and asked["fit_id"] is None  # never fitted: a raw score

    entries = read_positions_csv(scene / "references.csv", scene / "images")
    add_fine_features(
        store, FITTED, entries[:6], "aliked", {"max_keypoints": 128, "resize_max": 320}
    )
    photos = map_photos(store.open(FITTED).ids, scene / "images")
    record = fit_map(store, FITTED, photos, queries=2, fine_below=1.0)
    fit_id = hashlib.sha256((store.path(FITTED) / "training.json").read_bytes()).hexdigest()[:16]
    with api_stack.client() as http:
        after = http.get(f"/v1/maps/{FITTED}").json()
        fast = _job(http, photo, {"profile": "fast"})
    assert after["fine_set"]["extractor"]["name"] == "aliked"
    assert after["fine_set"]["references"] >= 6
    fit = after["fit"]
    assert fit["heldout_queries"] == 2
    assert fit["heldout_mae"] == pytest.approx(record["heldout"]["mae"])
    assert fit["heldout_coarse_mae"] == pytest.approx(record["heldout"]["coarse_mae"])
    assert fit["escalate_below"] == record.get("escalate_below")
    assert fit["fine_missing"] == record.get("fine_missing")
    # The running worker answers with the new fit: no restart.
    assert fast["profile_used"] == "fast" and fast["profile_note"] is None
    assert fast["calibrated"] is True and fast["fit_id"] == fit_id
    # With a camera the map says what it stores for placement (none of it built yet).
    store.set_camera(FITTED, Camera(fov_x_deg=FOV_DEG))
    with api_stack.client() as http:
        placed = http.get(f"/v1/maps/{FITTED}").json()
    assert placed["geometry"] == {"pair_frames": 0, "pose": 0}
