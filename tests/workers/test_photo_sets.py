"""Photo sets through the real service (issue 25): a real Celery worker, Redis, SQLite and
PostgreSQL. A set is one job: every photo recorded in order with its yaw, every candidate row
marked with its photo, one answer; a bad set is refused whole."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli.synthetic import make_world, render_view
from core.errors import InputError
from db import queries
from db.models import Job
from workers.client import Client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(scene_services):
    """On SQLite: the sets' rows on PostgreSQL are tested through the API
    (tests/api/test_photo_sets_http.py), which runs on both."""
    settings, _ = scene_services.get("sqlite")
    return Client(settings)


def _set_photos(scene: Path, yaws: list[float]) -> tuple[list[bytes], tuple[float, float]]:
    """JPEG views of the scene's first query position, one per yaw."""
    row = next(csv.DictReader((scene / "queries.csv").open()))
    x, y = float(row["x"]), float(row["y"])
    world = make_world(0)  # the scene fixture's world (generate_dataset seed 0)
    rng = np.random.default_rng(3)
    photos = []
    for yaw in yaws:
        ok, jpeg = cv2.imencode(".jpg", render_view(world, x, y, 40.0 + yaw, rng=rng))
        assert ok
        photos.append(jpeg.tobytes())
    return photos, (x, y)


def _jobs(client: Client) -> int:
    with client.db.session() as s:
        return s.query(Job).count()


def test_a_set_is_one_job_with_every_photo_and_its_evidence(service, scene) -> None:
    client = service
    yaws = [0.0, 120.0, 240.0]
    photos, truth = _set_photos(scene, yaws)
    job_id = client.submit_set(photos, "scene", {"top_k": 20}, yaws=yaws)
    assert client.submit_set(photos, "scene", {"top_k": 20}, yaws=yaws) == job_id  # idempotent
    assert client.submit_set(photos[::-1], "scene", {"top_k": 20}, yaws=yaws) != job_id
    res = client.wait(job_id, timeout=300)
    assert res.status == "done", res.error
    assert res.method is not None and res.method.startswith("set:")
    assert {c.photo for c in res.candidates} == {0, 1, 2}
    assert res.x is not None and res.y is not None
    assert abs(res.x - truth[0]) + abs(res.y - truth[1]) < 10
    assert "pool" in (res.timings or {})
    with client.db.session() as s:
        stored = queries.get_job_photos(s, job_id)
        assert [p.yaw_deg for p in stored] == yaws
        assert [p.index for p in stored] == [0, 1, 2]
        assert len({p.image_key for p in stored}) == 3
        assert queries.get_job(s, job_id).image_key == stored[0].image_key
    # Each photo keeps its own answer; the set's lies among those that agreed (a weighted median).
    assert [(p.photo, p.yaw) for p in res.set_photos] == list(enumerate(yaws))
    own = [(p.x, p.y) for p in res.set_photos if p.x is not None and p.y is not None]
    assert len(own) == 3 and all(p.localised is not None for p in res.set_photos)
    assert min(x for x, _ in own) <= res.x <= max(x for x, _ in own)


def test_a_corrupt_photo_fails_the_whole_set_with_its_number(service, scene) -> None:
    client = service
    photos, _ = _set_photos(scene, [0.0, 180.0])
    job_id = client.submit_set([photos[0], b"not a jpeg at all", photos[1]], "scene")
    res = client.wait(job_id, timeout=120)
    assert res.status == "failed"
    assert res.error is not None and "photo 2 of the set" in res.error
    assert res.candidates == []


@pytest.mark.parametrize(
    ("count", "yaws", "says"),
    [(1, None, "2 to 8 photos"), (9, None, "2 to 8 photos"), (3, [0.0, 90.0], "2 yaw(s)")],
)
def test_a_bad_set_is_refused_and_nothing_is_recorded(service, scene, count, yaws, says) -> None:
    client = service
    photos, _ = _set_photos(scene, [0.0])
    before = _jobs(client)
    with pytest.raises(InputError, match=says.replace("(", r"\(").replace(")", r"\)")):
        client.submit_set(photos * count, "scene", yaws=yaws)
    assert _jobs(client) == before


def test_an_oversize_photo_in_a_set_is_refused_before_anything_is_stored(service, scene) -> None:
    client = service
    photos, _ = _set_photos(scene, [0.0])
    huge = b"\xff" * (client.settings.max_image_bytes + 1)
    before = _jobs(client)
    with pytest.raises(InputError, match="photo 2 of the set is too large"):
        client.submit_set([photos[0], huge], "scene")
    assert _jobs(client) == before


def test_a_set_the_queue_refuses_leaves_no_job_and_no_photo(service, scene) -> None:
    """The set is committed before its message is sent (a worker must never see the message
    before the photos it names); when the send fails the job and the photos it stored go."""
    from pydantic import SecretStr

    from tests.support.process import free_port
    from workers.blobstore import blob_key
    from workers.client import BrokerUnavailable

    dead = SecretStr(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    client = Client(service.settings.model_copy(update={"broker_url": dead}))
    photos, _ = _set_photos(scene, [7.0, 187.0])  # views no other test stores
    assert not any(client.blobs.exists(blob_key(p)) for p in photos)
    before = _jobs(client)
    with pytest.raises(BrokerUnavailable):
        client.submit_set(photos, "scene")
    assert _jobs(client) == before
    assert not any(client.blobs.exists(blob_key(p)) for p in photos)
