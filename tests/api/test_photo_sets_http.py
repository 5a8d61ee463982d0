"""A photo set over HTTP (issue 25): several ``photo`` parts and optional ``yaws`` are one job;
a corrupt photo or a wrong yaw list makes no job."""

from __future__ import annotations

import json

import httpx
import pytest

from api.auth import COOKIE
from tests.api.conftest import MAP

pytestmark = pytest.mark.integration


def _upload_set(http, photos: list[bytes], yaws=None):
    files = [("photo", (f"p{n}.jpg", data, "image/jpeg")) for n, data in enumerate(photos)]
    data = {"yaws": json.dumps(yaws)} if yaws is not None else None
    return http.post(f"/v1/maps/{MAP}/jobs", files=files, data=data)


def test_several_photos_are_one_job_with_one_answer(api_stack):
    photos = [p.read_bytes() for p in api_stack.query_photos()[:2]]
    with api_stack.client() as http:
        answer = _upload_set(http, photos, [0, 90])
        assert answer.status_code == 202, answer.text
        done = http.get(answer.headers["location"], params={"wait": 120}).json()
    assert done["status"] == "done", done
    assert done["method"].startswith("set:")
    assert {c["photo"] for c in done["candidates"]} == {0, 1}
    # The Python client's job id for the same set: one id scheme.
    direct = api_stack.stack.client()
    assert direct.submit_set(photos, MAP, yaws=[0.0, 90.0]) == done["id"]
    # The job page lists every photo's evidence, each row with its photo.
    with httpx.Client(base_url=api_stack.url, cookies={COOKIE: api_stack.token}) as http:
        page = http.get(f"/jobs/{done['id']}")
    assert page.status_code == 200 and 'id="set-note"' in page.text
    assert '<th class="num">photo</th>' in page.text


@pytest.mark.parametrize(
    ("bad", "status", "detail"),
    [("corrupt", 400, "photo 2 of the set"), ("yaws", 400, "1 yaw(s) for 2 photos")],
)
def test_a_bad_set_makes_no_job(api_stack, bad, status, detail):
    photos = [p.read_bytes() for p in api_stack.query_photos()[:2]]
    yaws = None
    if bad == "corrupt":
        photos[1] = photos[1][: len(photos[1]) // 3]
    else:
        yaws = [0]
    before = api_stack.job_count()
    with api_stack.client() as http:
        answer = _upload_set(http, photos, yaws)
    assert answer.status_code == status, answer.text
    assert detail in answer.json()["detail"]
    assert api_stack.job_count() == before
