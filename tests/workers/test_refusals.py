"""Through a real worker, on SQLite and PostgreSQL: every message it cannot process ends as a
stored, readable failure, a reused job id cannot swap the photo, and bad options or matchers
fail their job with the right reason. Messages are sent by name, as another service would."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from db import queries
from tests.support.faults import (
    PrivateRedis,
    make_tiny_scene,
    query_images,
    send_by_name,
    stack,
    wait_until,
    write_blob,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_tiny_scene(tmp_path_factory.mktemp("refusals-scene"), num_queries=2)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def service(request, scene, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"refusals-{request.param}")
    redis = PrivateRedis(tmp / "redis").start()
    try:
        with stack(tmp / "svc", scene, backend=request.param, broker_url=redis.url) as st:
            worker = st.worker().start()
            try:
                yield st
            finally:
                worker.stop()
    finally:
        redis.stop()


def _send(st, args, kwargs=None, task="featureloc.localise") -> None:
    url = st.settings.broker_url.get_secret_value()
    send_by_name(url, st.settings.localise_queue, args, kwargs, task=task)


def _job(st, job_id: str):
    with st.db().session() as s:
        return queries.get_job(s, job_id)


def _finished(st, job_id: str):
    wait_until(
        lambda: (j := _job(st, job_id)) is not None and j.status in ("done", "failed"),
        60,
        f"job {job_id!r} to finish",
    )
    return _job(st, job_id)


def _dead_letters(st) -> list:
    with st.db().session() as s:
        return queries.list_dead_letters(s, limit=1000)


def _good_key(st) -> str:
    return write_blob(st.settings.blob_dir, query_images(st.scene)[0].read_bytes())


def test_malformed_messages_end_as_stored_failures(service):
    st = service
    key = _good_key(st)
    as_jobs = {
        "two-args": (["two-args", "tiny"], "2 positional argument(s)"),
        "long-map": (["long-map", "m" * 70, key, {}], "invalid map name"),
        "opts-list": (["opts-list", "tiny", key, [1, 2]], "not a JSON object"),
        "bad-key": (["bad-key", "tiny", "../etc/passwd", {}], "invalid image key"),
    }
    as_letters = {
        "invalid job id 'xxxxxxx": ["x" * 70, "tiny", key, {}],
        "invalid job id 12345": [12345, "tiny", key, {}],
    }
    before = len(_dead_letters(st))
    for args, _ in as_jobs.values():
        _send(st, args)
    for args in as_letters.values():
        _send(st, args)
    _send(st, ["anything"], task="featureloc.no_such_task")

    for job_id, (_, reason) in as_jobs.items():
        job = _finished(st, job_id)
        assert job.status == "failed" and reason in job.error, (job_id, job.error)
    wait_until(lambda: len(_dead_letters(st)) >= before + 3, 60, "3 dead letters")
    letters = _dead_letters(st)[: len(_dead_letters(st)) - before]
    reasons = " | ".join(d.reason for d in letters)
    for reason in [*as_letters, "unknown task 'featureloc.no_such_task'"]:
        assert reason in reasons, (reason, reasons)
    stored = [json.loads(d.arguments) for d in letters]
    assert {"args": [12345, "tiny", key, {}], "kwargs": {}} in stored, "raw arguments kept"

    served = st.client().wait(st.client().submit(query_images(st.scene)[1], "tiny"), 60)
    assert served.status == "done", "the worker serves on"


def test_a_reused_job_id_cannot_swap_the_photo(service):
    """The reviewer's case: a job fails, its id is re-sent with another photo and options."""
    st = service
    broken = write_blob(st.settings.blob_dir, query_images(st.scene)[0].read_bytes()[:300])
    _send(st, ["reuse-1", "tiny", broken, {"top_k": 5}])
    assert "corrupt or truncated JPEG" in _finished(st, "reuse-1").error

    before = len(_dead_letters(st))
    _send(st, ["reuse-1", "tiny", _good_key(st), {"top_k": 3}])
    wait_until(lambda: len(_dead_letters(st)) > before, 60, "the re-send to be refused")
    letter = _dead_letters(st)[0]
    assert letter.job_id == "reuse-1"
    assert "taken by another request (its image_key, options differ)" in letter.reason
    job = _job(st, "reuse-1")
    assert (job.status, job.image_key, job.options) == ("failed", broken, {"top_k": 5})
    assert job.attempts == 1, "the conflicting message ran nothing"


def _fails_with(st, job_id: str, options: dict, reason: str) -> None:
    _send(st, [job_id, "tiny", _good_key(st), options])
    job = _finished(st, job_id)
    assert job.status == "failed" and reason in job.error, (job_id, job.status, job.error)


def test_an_incompatible_matcher_fails_as_incompatible(service):
    """Not "weights missing": compatibility is checked before any weights are looked for."""
    _fails_with(service, "superglue-on-sift", {"matcher": "superglue"}, "cannot match 'sift'")


def test_the_client_refuses_an_incompatible_matcher_before_storing_anything(service):
    """The same rule at submission (core.localiser.require_compatible): no job, no photo."""
    from core.errors import MapError
    from tests.support.faults import variants
    from workers.blobstore import blob_key

    st = service
    client = st.client()
    photo = variants(query_images(st.scene)[0].read_bytes(), 2)[1]  # sent nowhere else
    with pytest.raises(MapError, match="matcher 'superglue' cannot match 'sift' features"):
        client.submit(photo, "tiny", {"matcher": "superglue"})
    assert not client.blobs.exists(blob_key(photo))
    key = client.blobs.put(photo)
    with pytest.raises(MapError, match="cannot match 'sift'"):
        client.register("registered-superglue", "tiny", key, {"matcher": "lightglue"})
    assert _job(st, "registered-superglue") is None


def test_an_unknown_estimator_conf_key_fails_the_job(service):
    """Sent by name, so the client's own check of the options is bypassed: the worker's is
    what is tested (the strict confs of core/config.py)."""
    _fails_with(service, "bogus-conf", {"estimator_conf": {"bogus": 1}}, "bogus")


def test_created_at_is_when_the_job_was_sent(service):
    st = service
    sent = datetime.now(UTC) - timedelta(hours=1)
    _send(st, ["dated", "tiny", _good_key(st), {}], {"sent_at": sent.isoformat()})
    job = _finished(st, "dated")
    assert job.status == "done"
    assert abs(job.created_at - sent) < timedelta(seconds=1), (job.created_at, sent)
    assert job.started_at - job.created_at > timedelta(minutes=59)

    via_client = st.client().submit(query_images(st.scene)[1], "tiny", {"top_k": 3})
    res = st.client().wait(via_client, 60)
    assert res.created_at <= res.started_at, "the client records the job when it sends it"
