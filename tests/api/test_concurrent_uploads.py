"""50 uploads at once from several clients, each photo sent twice: 50 jobs, none lost or
duplicated, every one answered by the worker."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from db.models import Job
from tests.api.conftest import MAP
from tests.support.faults import JOB_OPTIONS, variants

pytestmark = pytest.mark.integration

PHOTOS = 50
CLIENTS = 5


def test_fifty_concurrent_uploads_become_fifty_jobs(api_stack):
    query = api_stack.query_photos()[0].read_bytes()
    # Distinct bytes, equal work (a JPEG comment per variant); tagged per backend so that the
    # two database runs of this test never share a job id.
    photos = variants(query + api_stack.backend.encode(), PHOTOS)
    tokens = [api_stack.new_key() for _ in range(CLIENTS)]
    before = api_stack.job_count()
    options = json.dumps(JOB_OPTIONS)

    def upload(i: int) -> tuple[int, int, str]:
        # Each photo twice, by two different clients (keys), all at once.
        with api_stack.client(tokens[i % CLIENTS]) as http:
            answer = http.post(
                f"/v1/maps/{MAP}/jobs",
                files={"photo": (f"{i}.jpg", photos[i % PHOTOS], "image/jpeg")},
                data={"options": options},
            )
        return i % PHOTOS, answer.status_code, answer.json().get("id")

    with ThreadPoolExecutor(max_workers=2 * CLIENTS) as pool:
        answers = list(pool.map(upload, range(2 * PHOTOS)))

    assert {status for _, status, _ in answers} == {202}, answers
    per_photo: dict[int, set[str]] = {}
    for photo, _, job_id in answers:
        per_photo.setdefault(photo, set()).add(job_id)
    assert all(len(ids) == 1 for ids in per_photo.values()), "one photo, two jobs"
    ids = {next(iter(v)) for v in per_photo.values()}
    assert len(ids) == PHOTOS, "two photos share a job"
    assert api_stack.job_count() == before + PHOTOS

    # None lost: every job comes out done, each claimed exactly once.
    with api_stack.client() as http:
        results = [http.get(f"/v1/jobs/{j}", params={"wait": 60}).json() for j in sorted(ids)]
    assert [r["status"] for r in results] == ["done"] * PHOTOS, {r["error"] for r in results}
    with api_stack.stack.db().session() as s:
        attempts = dict(s.execute(select(Job.id, Job.attempts).where(Job.id.in_(ids))).all())
    assert attempts == dict.fromkeys(ids, 1)
