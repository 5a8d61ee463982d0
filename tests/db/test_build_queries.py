"""db/build_queries.py: a queued map build's rows, on SQLite and PostgreSQL."""

from __future__ import annotations

from db import build_queries as bq
from db.queries import MAX_ERROR_LENGTH

SIFT = {"name": "sift", "conf": {}}
EXHAUSTIVE = {"name": "exhaustive", "conf": {}}


def test_a_build_finalises_when_its_last_chunk_finishes_once(database):
    with database.session() as s:
        bq.create_build(s, "b1", "campus", SIFT, EXHAUSTIVE, [3, 2], skipped=4)
    with database.session() as s:
        assert bq.active_build(s, "campus").id == "b1"
        assert bq.claim_chunk(s, "b1", 0, "w1").status == "running"
        assert bq.claim_chunk(s, "b1", 7, "w1") is None  # no such chunk
        assert not bq.finish_chunk(s, "b1", 0, added=3, skipped=0, failed={})
        # A redelivered, already recorded chunk changes nothing.
        assert not bq.finish_chunk(s, "b1", 0, added=3, skipped=0, failed={})
        bq.claim_chunk(s, "b1", 1, "w2")
        last = bq.finish_chunk(
            s, "b1", 1, added=1, skipped=0, failed={"bad": "not an image"}
        )  # fmt: skip
        assert last
    with database.session() as s:
        b = bq.get_build(s, "b1")
        assert (b.status, b.total, b.processed, b.added, b.skipped) == ("finalising", 9, 9, 4, 4)
        assert b.failed == {"bad": "not an image"}
        bq.finish_build(s, "b1")
    with database.session() as s:
        assert bq.get_build(s, "b1").status == "done" and bq.active_build(s, "campus") is None


def test_a_build_without_chunks_starts_finalising(database):
    with database.session() as s:
        build = bq.create_build(s, "b0", "campus", SIFT, EXHAUSTIVE, [], skipped=5)
        assert (build.status, build.total, build.processed) == ("finalising", 5, 5)


def test_an_abandoned_build_skips_its_late_chunks(database):
    with database.session() as s:
        bq.create_build(s, "old", "campus", SIFT, EXHAUSTIVE, [2])
        bq.finish_build(s, "old", "abandoned: a new build was started" + "!" * MAX_ERROR_LENGTH)
    with database.session() as s:
        chunk = bq.claim_chunk(s, "old", 0, "w")
        assert (chunk.status, chunk.attempts) == ("pending", 0)  # left alone: the caller skips
        b = bq.get_build(s, "old")
        assert b.status == "failed" and len(b.error) == MAX_ERROR_LENGTH
        assert b.error.endswith("...")


def test_builds_are_listed_newest_first_per_map(database):
    with database.session() as s:
        for build_id, name in [("a", "campus"), ("b", "lab"), ("c", "campus")]:
            bq.create_build(s, build_id, name, SIFT, EXHAUSTIVE, [1])
    with database.session() as s:
        assert [b.id for b in bq.list_builds(s, "campus")] == ["c", "a"]
        assert {b.id for b in bq.list_builds(s)} == {"a", "b", "c"}
        assert [b.id for b in bq.list_builds(s, limit=1)] == ["c"]
