"""Dead letters and job conflicts in db/queries.py, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from db import queries


def test_dead_letter_keeps_any_arguments_bounded(database):
    junk = {"args": [object(), b"\x00\xff", 1.5, None], "kwargs": {"k": "v" * 50_000}}
    with database.session() as s:
        queries.record_dead_letter(
            s,
            task="t" * 300,
            args=junk["args"],
            kwargs=junk["kwargs"],
            reason="r" * 10_000,
            message_id="m" * 300,
        )
    with database.session() as s:
        (letter,) = queries.list_dead_letters(s)
        assert len(letter.task) == 255 and len(letter.message_id) == 255
        assert len(letter.arguments) == queries.MAX_ARGUMENTS_LENGTH
        assert letter.arguments.startswith('{"args": ["<object object')
        assert len(letter.reason) == queries.MAX_ERROR_LENGTH and letter.reason.endswith("...")


def test_dead_letters_newest_first(database):
    with database.session() as s:
        for i in range(3):
            queries.record_dead_letter(s, task="t", args=[i], kwargs={}, reason=f"r{i}")
    with database.session() as s:
        letters = queries.list_dead_letters(s, limit=2)
        assert [json.loads(d.arguments)["args"] for d in letters] == [[2], [1]]


def test_job_conflict_names_what_differs(database):
    with database.session() as s:
        job, _ = queries.create_job(s, "j", "tiny", "k1", {"top_k": 5})
        assert queries.job_conflict(job, "tiny", "k1", {"top_k": 5}) is None
        why = queries.job_conflict(job, "tiny", "k2", {"top_k": 6})
        assert "'j' is taken by another request (its image_key, options differ)" in why
        assert "map" in queries.job_conflict(job, "other", "k1", {"top_k": 5})
