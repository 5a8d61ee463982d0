"""API keys: missing, wrong and revoked keys are refused, keys stay inside their maps, the rate
limit holds, and no token ever shows up in an answer or in the server's log."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.api.conftest import MAP, OTHER_MAP
from tests.support.process import REPO

pytestmark = pytest.mark.integration


def _photo(api_stack) -> dict:
    return {"photo": ("q.jpg", api_stack.query_photos()[0].read_bytes(), "image/jpeg")}


def _assert_problem(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_missing_wrong_and_revoked_keys_are_refused(api_stack):
    revoked = api_stack.new_key("to-revoke")
    with api_stack.client(revoked) as http:
        assert http.get("/v1/maps").status_code == 200  # valid before revocation
    cli = _cli(api_stack, "apikey", "revoke", "to-revoke")
    assert cli.returncode == 0, cli.stderr

    before = api_stack.job_count()
    headers = {
        "missing": {},
        "wrong": {"Authorization": "Bearer flk_" + "x" * 43},
        "revoked": {"Authorization": f"Bearer {revoked}"},
        "wrong X-API-Key": {"X-API-Key": "not-a-key"},
        "not bearer": {"Authorization": f"Basic {api_stack.token}"},
    }
    with httpx.Client(base_url=api_stack.url, timeout=30) as http:
        for name, h in headers.items():
            for method, path, kwargs in (
                ("POST", f"/v1/maps/{MAP}/jobs", {"files": _photo(api_stack)}),
                ("GET", "/v1/jobs", {}),
                ("GET", "/v1/maps", {}),
                ("GET", f"/v1/maps/{MAP}", {}),
            ):
                answer = http.request(method, path, headers=h, **kwargs)
                _assert_problem(answer, 401)
                assert answer.headers["www-authenticate"].startswith("Bearer"), name
        # The X-API-Key header is the other way to send a valid key.
        assert http.get("/v1/maps", headers={"X-API-Key": api_stack.token}).status_code == 200
    assert api_stack.job_count() == before, "a refused request created a job"


def test_a_key_stays_inside_its_maps(api_stack):
    with api_stack.client() as http:
        job = http.post(f"/v1/maps/{MAP}/jobs", files=_photo(api_stack)).json()
    before = api_stack.job_count()
    with api_stack.client(api_stack.other_token) as http:
        _assert_problem(http.post(f"/v1/maps/{MAP}/jobs", files=_photo(api_stack)), 403)
        _assert_problem(http.get(f"/v1/maps/{MAP}"), 403)
        _assert_problem(http.get("/v1/jobs", params={"map": MAP}), 403)
        # Another map's job is not even said to exist.
        _assert_problem(http.get(f"/v1/jobs/{job['id']}"), 404)
        _assert_problem(http.get(f"/v1/jobs/{job['id']}/plot.svg"), 404)
        assert [m["name"] for m in http.get("/v1/maps").json()] == [OTHER_MAP]
        assert http.get("/v1/jobs").json()["jobs"] == []  # the other map has no jobs
        assert http.get(f"/v1/maps/{OTHER_MAP}").status_code == 200
    assert api_stack.job_count() == before


def test_the_rate_limit_refuses_past_the_key_limit(api_stack):
    token = api_stack.new_key(rate_limit=3)
    with api_stack.client(token) as http:
        answers = [http.get("/v1/maps") for _ in range(7)]
        other_key = http.get("/v1/maps", headers={"Authorization": f"Bearer {api_stack.token}"})
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    # The window may turn over once among the 7 requests; one of the two windows still has 4+.
    limited = [a for a in answers[3:] if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    body = _assert_problem(limited[0], 429)
    assert "3 requests per minute" in body["detail"]
    assert 1 <= int(limited[0].headers["retry-after"]) <= 60
    assert other_key.status_code == 200, "one key's limit does not touch another key"


def test_apikey_cli_shows_the_token_once_and_only_its_hash_is_stored(api_stack):
    created = _cli(api_stack, "apikey", "create", "cli-key", "--map", MAP, "--rate-limit", "100")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("flk_") and len(token) > 40
    listed = _cli(api_stack, "apikey", "list")
    assert "cli-key" in listed.stdout and MAP in listed.stdout
    assert token not in listed.stdout + listed.stderr
    with api_stack.stack.db().session() as s:
        from db.models import ApiKey

        stored = [k for k in s.query(ApiKey).all() if k.name == "cli-key"]
        assert len(stored) == 1 and token not in repr(vars(stored[0]))
    with api_stack.client(token) as http:
        assert http.get(f"/v1/maps/{MAP}").status_code == 200
        _assert_problem(http.get(f"/v1/maps/{OTHER_MAP}"), 403)
    again = _cli(api_stack, "apikey", "create", "cli-key")
    assert again.returncode != 0 and "exists already" in again.stderr
    assert _cli(api_stack, "apikey", "revoke", "no-such-key").returncode != 0


def test_no_token_in_any_answer_or_log_line(api_stack):
    with api_stack.client() as http:
        answers = [
            http.get("/v1/jobs"),
            http.get("/v1/maps"),
            http.get("/v1/jobs/nope"),
            http.post(f"/v1/maps/{MAP}/jobs", content=b"x"),
            http.get("/readyz"),
        ]
    for answer in answers:
        assert api_stack.token not in answer.text
        assert api_stack.token not in str(answer.headers)
    log = api_stack.server.log()
    assert "GET /v1/jobs" in log, "the access log is on"
    for secret in (api_stack.token, api_stack.other_token):
        assert secret not in log


def test_a_key_sent_in_the_query_string_stays_out_of_the_access_log(api_stack):
    """Keys are not read from URLs, but a client may still send one there: uvicorn logs the
    path with its query, so the value is redacted (api/accesslog.py)."""
    token = api_stack.new_key()
    with httpx.Client(base_url=api_stack.url, timeout=30) as http:
        refused = http.get("/v1/jobs", params={"limit": 3, "api_key": token})
        also = http.get("/healthz", params={"Token": token + "-2", "map": MAP})
    _assert_problem(refused, 401)  # a key in the URL is not a key
    assert also.status_code == 200
    log = api_stack.server.log()
    assert "GET /v1/jobs?limit=3&api_key=[redacted] HTTP/1.1" in log, "the access log line"
    assert f"GET /healthz?Token=[redacted]&map={MAP} HTTP/1.1" in log
    assert token not in log


def _cli(api_stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**api_stack.stack.env, "COLUMNS": "200"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
