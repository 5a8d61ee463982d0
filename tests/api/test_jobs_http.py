"""A photo in over HTTP, its estimate out: through a real server, worker, Redis and database."""

from __future__ import annotations

import json
import time

import pytest

from tests.api.conftest import MAP

pytestmark = pytest.mark.integration


def _upload(http, photo, options=None, map_name=MAP):
    files = {"photo": (photo.name, photo.read_bytes(), "image/jpeg")}
    data = {"options": json.dumps(options)} if options is not None else None
    return http.post(f"/v1/maps/{map_name}/jobs", files=files, data=data)


def test_a_photo_goes_in_and_its_estimate_comes_out(api_stack):
    photo = api_stack.query_photos()[0]
    with api_stack.client() as http:
        answer = _upload(http, photo, {"estimator": "best"})
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert answer.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["status"] in ("pending", "running", "done")
        done = http.get(answer.headers["location"], params={"wait": 60}).json()
    assert done["status"] == "done", done
    assert done["localised"] and 0 < done["confidence"] <= 1
    best = max(done["candidates"], key=lambda c: c["inliers"])
    assert (done["x"], done["y"]) == (best["x"], best["y"])  # estimator "best"
    assert {"extract", "match", "verify", "total"} <= set(done["timings"])
    # The same job as the Python client sees: one queue, one job id scheme.
    direct = api_stack.stack.client()
    assert direct.submit(photo, MAP, {"estimator": "best"}) == job["id"]
    assert direct.result(job["id"]).to_dict() == _without_json_types(done)


def _without_json_types(job: dict) -> dict:
    """The API's JSON with its datetimes written as the client's to_dict writes them."""
    from datetime import datetime

    out = dict(job)
    for k in ("created_at", "started_at", "finished_at"):
        out[k] = datetime.fromisoformat(out[k].replace("Z", "+00:00")).isoformat()
    return out


def test_resubmission_returns_the_same_job_and_other_options_another(api_stack):
    photo = api_stack.query_photos()[1]
    with api_stack.client() as http:
        first = _upload(http, photo, {"top_k": 7}).json()["id"]
        before = api_stack.job_count()
        again = _upload(http, photo, {"top_k": 7})
        other = _upload(http, photo, {"top_k": 8})
    assert again.status_code == 202 and again.json()["id"] == first
    assert other.status_code == 202 and other.json()["id"] != first
    assert api_stack.job_count() == before + 1  # only the other options made a job


def test_long_poll_answers_when_done_or_at_the_timeout(api_stack):
    # A photo nobody sent yet, made unique by bytes after the JPEG's end marker.
    photo = api_stack.query_photos()[2].read_bytes() + b"\x00long-poll"
    with api_stack.client() as http:
        job = http.post(f"/v1/maps/{MAP}/jobs", files={"photo": ("q.jpg", photo)}).json()
        for wait in (0.0, 1.0):
            t0 = time.monotonic()
            answer = http.get(f"/v1/jobs/{job['id']}", params={"wait": wait}).json()
            elapsed = time.monotonic() - t0
            assert elapsed < wait + 1.0, "waited past the timeout"
            assert answer["status"] in ("done", "failed") or elapsed >= wait, "returned early"
        done = http.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
    assert done["status"] == "done"


def test_jobs_are_listed_filtered_and_paged(api_stack):
    photos = api_stack.query_photos()[:3]
    with api_stack.client() as http:
        ids = {_upload(http, p, {"top_k": 11}).json()["id"] for p in photos}
        everything = []
        cursor = None
        while True:
            params = {"map": MAP, "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = http.get("/v1/jobs", params=params).json()
            assert len(page["jobs"]) <= 2
            everything += [j["id"] for j in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(everything) == len(set(everything)), "a job on two pages"
        assert ids <= set(everything)
        assert len(everything) == api_stack.job_count()  # every job is on this map
        failed = http.get("/v1/jobs", params={"status": "failed"}).json()["jobs"]
        assert all(j["status"] == "failed" for j in failed)
        future = http.get("/v1/jobs", params={"since": "2999-01-01T00:00:00"}).json()
        assert future["jobs"] == [] and future["next_cursor"] is None
        bad = http.get("/v1/jobs", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/problem+json"


def test_maps_are_described(api_stack):
    with api_stack.client() as http:
        names = [m["name"] for m in http.get("/v1/maps").json()]
        scene = http.get(f"/v1/maps/{MAP}").json()
        missing = http.get("/v1/maps/no-such-map")
    assert MAP in names
    refs = (api_stack.scene / "references.csv").read_text().splitlines()[1:]
    assert scene["num_references"] == len(refs) == len(scene["references"])
    assert scene["extractor"]["name"] == "sift"
    assert scene["reference_photos"] is True and scene["camera"] is None
    assert missing.status_code == 404 and missing.json()["status"] == 404


def test_health_readiness_and_docs(api_stack):
    with api_stack.client() as http:
        assert http.get("/healthz").json()["status"] == "ok"
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {
            "broker": "ok",
            "rate_limit_redis": "ok",
            "database": "ok",
        }
        schema = http.get("/openapi.json").json()
        assert "/v1/maps/{map_name}/jobs" in schema["paths"]
        upload = schema["paths"]["/v1/maps/{map_name}/jobs"]["post"]["requestBody"]
        assert "multipart/form-data" in upload["content"]
        docs = http.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        # The docs' assets are served here, not from a CDN (no internet in production networks).
        assets = [a for a in docs.text.split('"') if a.endswith((".js", ".css"))]
        assert assets and all(a.startswith("/") for a in assets), assets
        assert all(http.get(a).status_code == 200 for a in assets)
