"""Malformed ``featureloc.localise`` messages: refused before the database is touched, the same
way on SQLite and PostgreSQL, and each leaves a readable failure (a job row or a dead letter)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from db import queries
from workers.messages import BadMessage, parse_localise, record_bad_message

KEY = hashlib.sha256(b"photo").hexdigest()
OK_ID = "a" * 64  # the longest id
OK_MAP = "m" * 64  # the longest map name

# (args, kwargs, part of the reason, where it is stored)
BAD = {
    "70-char id": (["j" * 70, "tiny", KEY, {}], {}, "invalid job id", "dead letter"),
    "303-char id": (["j" * 303, "tiny", KEY, {}], {}, "invalid job id", "dead letter"),
    "integer id": ([12345, "tiny", KEY, {}], {}, "invalid job id 12345", "dead letter"),
    "id with a slash": (["a/b", "tiny", KEY, {}], {}, "invalid job id", "dead letter"),
    "no arguments": ([], {}, "0 positional", "dead letter"),
    "70-char map": (["job-map", "m" * 70, KEY, {}], {}, "invalid map name", "job"),
    "integer map": (["job-intmap", 7, KEY, {}], {}, "invalid map name 7: not a string", "job"),
    "options a list": (["job-list", "tiny", KEY, [1, 2]], {}, "not a JSON object", "job"),
    "options a string": (["job-str", "tiny", KEY, "top_k=5"], {}, "not a JSON object", "job"),
    "two arguments": (["job-two", "tiny"], {}, "2 positional argument(s)", "job"),
    "five arguments": (["job-five", "tiny", KEY, {}, 1], {}, "5 positional", "job"),
    "bad image key": (["job-key", "tiny", "../../etc/passwd", {}], {}, "invalid image key", "job"),
    "unknown keyword": (["job-kw", "tiny", KEY, {}], {"colour": 1}, "colour", "job"),
    "naive sent_at": (["job-sent", "tiny", KEY], {"sent_at": "2026-01-01T00:00"}, "sent_at", "job"),
    "huge options": (["job-big", "tiny", KEY, {"x": "y" * 20_000}], {}, "bytes of JSON", "job"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_message_is_refused_and_stored(database, case):
    args, kwargs, reason, where = BAD[case]
    with pytest.raises(BadMessage, match="bad message") as refused:
        parse_localise(tuple(args), kwargs)
    assert reason in str(refused.value)
    stored = record_bad_message(
        database, "featureloc.localise", "msg-1", tuple(args), kwargs, str(refused.value), "w"
    )
    assert stored == where
    with database.session() as s:
        if where == "job":
            job = queries.get_job(s, args[0])
            assert job.status == "failed" and reason in job.error
            assert not queries.list_dead_letters(s)
        else:
            (letter,) = queries.list_dead_letters(s)
            assert letter.job_id is None and reason in letter.reason
            assert letter.message_id == "msg-1" and letter.task == "featureloc.localise"
            assert (
                str(args[0])[:50] in letter.arguments if args else '"args": []' in letter.arguments
            )


def test_longest_valid_fields_are_stored_on_both_backends(database):
    msg = parse_localise((OK_ID, OK_MAP, KEY, {"top_k": 5}), {})
    with database.session() as s:
        queries.create_job(s, *vars(msg.fields).values())
    with database.session() as s:
        job = queries.get_job(s, OK_ID)
        assert (job.map_name, job.image_key, job.options) == (OK_MAP, KEY, {"top_k": 5})


def test_three_arguments_mean_default_options_and_sent_at_dates_the_job(database):
    sent = datetime.now(UTC) - timedelta(minutes=10)
    msg = parse_localise(("j1", "tiny", KEY), {"sent_at": sent.isoformat()})
    assert msg.fields.options == {} and msg.sent_at == sent
    future = parse_localise(("j1", "tiny", KEY), {"sent_at": "2999-01-01T00:00:00+00:00"})
    assert future.sent_at <= datetime.now(UTC), "a clock ahead of ours is clamped"


def test_bad_message_for_a_taken_id_leaves_the_job_alone(database):
    with database.session() as s:
        queries.create_job(s, "taken", "tiny", KEY, {})
    args = ("taken", "tiny", KEY, "not-an-object")
    stored = record_bad_message(database, "featureloc.localise", None, args, {}, "bad", "w")
    assert stored == "dead letter"
    with database.session() as s:
        assert queries.get_job(s, "taken").status == "pending"
        (letter,) = queries.list_dead_letters(s)
        assert letter.job_id == "taken"
