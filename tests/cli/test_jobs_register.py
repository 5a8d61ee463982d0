"""``featureloc jobs register`` / ``jobs dead-letters``, and a clear line when the database is
unreachable: the real CLI in a subprocess, on a SQLite file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from db import queries
from db.session import Database
from tests.support.faults import free_port, write_blob
from tests.support.process import run_cli


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "FEATURELOC_DATA_DIR": str(tmp_path), **extra}


def test_register_records_once_and_refuses_bad_or_conflicting_jobs(tmp_path):
    env = _env(tmp_path)
    key = write_blob(tmp_path / "blobs", b"a photo's bytes")
    ok = run_cli(env, "jobs", "register", "svc-1", "--map", "getty", "--image-key", key)
    assert ok.returncode == 0 and "svc-1 registered" in ok.stdout, ok.stderr
    again = run_cli(env, "jobs", "register", "svc-1", "--map", "getty", "--image-key", key)
    assert again.returncode == 0 and "already registered" in again.stdout, again.stderr

    other = write_blob(tmp_path / "blobs", b"another photo")
    refusals = {
        "taken by another request (its image_key differ)": ["svc-1", "--image-key", other],
        "invalid job id": ["x" * 65, "--image-key", key],
        "not in the blob store": ["svc-2", "--image-key", "0" * 64],
        "bad options": ["svc-3", "--image-key", key, "--option", "top_kk=3"],
    }
    for reason, args in refusals.items():
        out = run_cli(env, "jobs", "register", args[0], "--map", "getty", *args[1:])
        said = " ".join(out.stderr.split())
        assert out.returncode == 1 and reason in said, (reason, said)

    db = Database(f"sqlite:///{(tmp_path / 'featureloc.db').resolve()}")
    with db.session() as s:
        jobs = queries.list_jobs(s)
        assert [(j.id, j.status, j.image_key) for j in jobs] == [("svc-1", "pending", key)]


def test_dead_letters_are_listed(tmp_path):
    env = _env(tmp_path)
    assert run_cli(env, "db", "upgrade").returncode == 0
    db = Database(f"sqlite:///{(tmp_path / 'featureloc.db').resolve()}")
    with db.session() as s:
        queries.record_dead_letter(
            s, task="featureloc.localise", args=[42], kwargs={}, reason="bad message: id 42"
        )
    out = run_cli(env, "jobs", "dead-letters", "--json")
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["reason"] == "bad message: id 42" and json.loads(row["arguments"])["args"] == [42]


def test_unreachable_database_is_one_clear_line(tmp_path):
    url = f"postgresql+psycopg://postgres:s3cret@127.0.0.1:{free_port()}/x"
    out = run_cli(_env(tmp_path, FEATURELOC_DATABASE_URL=url), "jobs", "list")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "s3cret" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database unavailable at "), lines
    assert "postgres:***@127.0.0.1" in lines[0] and "refused" in lines[0]
