"""Tasks past the hard time limit: Celery kills their process before the soft limit's handler runs
(its exception waits until Python runs again, and OpenCV's SIFT of a large photo holds the
process for seconds). The worker's main process must still end the job or the build chunk with
the reason (workers/tasks.py, workers/build.py)."""

from __future__ import annotations

import pytest

from db import queries
from tests.support.faults import (
    FAST_RECOVERY,
    JOB_OPTIONS,
    big_references,
    build_ended,
    make_tiny_scene,
    stack,
    submit_big_build,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_tiny_scene(tmp_path_factory.mktemp("tiny-scene"))


def test_a_chunk_killed_at_the_hard_time_limit_fails_with_its_reason_and_the_build_ends(
    tmp_path, scene, redis
):
    """A chunk that runs past the hard time limit is killed before its own handler can record
    anything (the soft limit's exception waits for OpenCV's SIFT of a 12 MP photo to return to
    Python, and the hard limit comes first): the worker's main process records the chunk
    failed with the reason, removes what it wrote, and the build ends instead of waiting on it
    for ever."""
    from sqlalchemy import select

    from core.mapstore import part_files
    from db.models import MapBuildChunk

    refs = big_references(scene, tmp_path / "big", count=1, size=(4000, 3000))
    limits = {"task_time_limit": "2", "task_soft_time_limit": "1"}  # SIFT there takes ~3 s
    with stack(tmp_path, scene, backend="sqlite", broker_url=redis.url, **limits) as st:
        worker = st.worker().start()
        db = st.db()
        try:
            plan = submit_big_build(st, refs, chunk_size=1)
            build = build_ended(st, plan.build_id, 120)
        finally:
            worker.stop()
    # The build ends as one whose every photo failed does: failed, as there is nothing to fit
    # retrieval on, with each photo's failure listed with its reason.
    assert (build.status, build.added) == ("failed", 0), (build.status, build.error)
    assert "has no references" in (build.error or "")
    assert set(build.failed) == {p.stem for p in (refs / "images").glob("*.jpg")}
    assert all("exceeded the hard time limit of 2 s" in r for r in build.failed.values())
    with db.session() as s:
        (chunk,) = s.scalars(select(MapBuildChunk).where(MapBuildChunk.build_id == plan.build_id))
    assert chunk.status == "failed" and "hard time limit" in (chunk.error or "")
    parts = st.settings.maps_dir / "big" / "parts"
    assert not (parts.is_dir() and part_files(parts)), "the killed chunk left no part"
    assert "Hard time limit" in worker.log()


def test_a_job_killed_at_the_hard_time_limit_fails_at_once_with_its_reason(tmp_path, scene, redis):
    """A job whose photo keeps OpenCV's SIFT busy past the hard time limit (a map of one 19 MP
    reference, so the query is extracted at that size) is killed before the soft limit's
    handler runs: the worker's main process fails it at once with the reason, on its first
    attempt, rather than the stale check re-sending it into the same limit again and again."""
    from core.images import decode_image

    big = big_references(scene, tmp_path / "big", count=1, size=(5000, 3750))
    limits = {**FAST_RECOVERY, "task_time_limit": "2", "task_soft_time_limit": "1"}
    with stack(tmp_path, big, backend="sqlite", broker_url=redis.url, **limits) as st:
        worker = st.worker().start()
        client, db = st.client(), st.db()
        try:
            photo = next((big / "images").glob("*.jpg"))  # the reference itself
            assert decode_image(photo.read_bytes()).shape[:2] == (3750, 5000)
            result = client.wait(client.submit(photo, "tiny", JOB_OPTIONS), timeout=60)
        finally:
            worker.stop()
    assert result.status == "failed"
    assert result.error == "hard time limit of 2 s exceeded", result.error
    with db.session() as s:
        assert queries.get_job(s, result.id).attempts == 1, "failed at once, not re-sent"
    assert "Hard time limit (2s) exceeded" in worker.log()
