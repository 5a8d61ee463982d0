"""db/: migrations, models and queries, on SQLite and PostgreSQL (fixtures in fixtures_db.py)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import delete, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from core.types import CandidateResult
from db import queries
from db.models import Base, CandidateMatch, Job, ReferenceImage
from db.session import Database, alembic_config, init_db, make_engine

TABLES = {"maps", "reference_images", "jobs", "candidate_matches", "api_keys", "dead_letters"}


def candidate(ref: str, inliers: int, rank: int) -> CandidateResult:
    return CandidateResult(
        reference_id=ref,
        position=(10.0 * rank, -5.0 * rank),
        retrieval_rank=rank,
        retrieval_score=1.0 / (rank + 1),
        query_keypoints=2048,
        reference_keypoints=1900,
        tentative_matches=inliers * 2,
        inliers=inliers,
        mean_match_score=0.8,
    )


def count(s: Session, model, **where) -> int:
    stmt = select(func.count()).select_from(model).filter_by(**where)
    return s.scalar(stmt)


# ---------------------------------------------------------------------------------- schema


def test_migrations_create_tables_and_are_idempotent(db_url):
    init_db(db_url)
    init_db(db_url)  # second run: already at head, must be a no-op
    engine = make_engine(db_url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as connection:
        version = connection.scalar(text("SELECT version_num FROM alembic_version"))
    # One linear chain of migrations: a single head, and the database is at it.
    assert ScriptDirectory.from_config(alembic_config(db_url)).get_heads() == [version]


def test_migrated_schema_matches_models(db_url):
    init_db(db_url)
    with make_engine(db_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
    assert diffs == []


def test_candidate_columns_are_the_candidate_schema():
    columns = [c.name for c in CandidateMatch.__table__.columns]
    assert columns == ["id", "job_id", *CandidateResult.ROW_FIELDS]


def test_stored_candidates_read_back_as_saved(database):
    saved = [candidate("r1", 30, 0), candidate("r2", 120, 1)]
    with database.session() as s:
        queries.create_job(s, "j1", "m", "img", {})
        queries.save_result(
            s, "j1", x=1, y=2, confidence=0.9, localised=True, timings={}, matcher="mnn",
            worker="w", candidates=saved,
        )  # fmt: skip
    with database.session() as s:
        assert queries.get_candidates(s, "j1") == [saved[1], saved[0]]  # most inliers first


def test_a_posed_job_keeps_its_heading_and_pose_inliers(database):
    with database.session() as s:
        queries.create_job(s, "j1", "m", "img", {})
        queries.save_result(
            s, "j1", x=1, y=2, confidence=0.9, localised=True, timings={}, matcher="mnn",
            worker="w", candidates=[], method="cluster+pose", heading=-1.25, pose_inliers=87,
        )  # fmt: skip
    with database.session() as s:
        job = queries.get_job(s, "j1")
        assert job is not None and job.method == "cluster+pose"
        assert (job.heading, job.pose_inliers) == (-1.25, 87)


def test_status_check_constraint(database):
    with pytest.raises(IntegrityError, match="(?i)check"), database.session() as s:
        job, _ = queries.create_job(s, "j1", "m", "img", {})
        job.status = "exploded"
        s.flush()


def test_deleting_a_job_cascades_to_its_candidates(database):
    with database.session() as s:
        queries.create_job(s, "j1", "m", "img", {})
        queries.save_result(
            s, "j1", x=1, y=2, confidence=0.9, localised=True, timings={}, matcher="mnn",
            worker="w", candidates=[candidate("r1", 50, 0)],
        )  # fmt: skip
    with database.session() as s:
        # Core DELETE: the database's ON DELETE CASCADE must do it (SQLite needs foreign_keys=ON).
        s.execute(delete(Job).where(Job.id == "j1"))
    with database.session() as s:
        assert count(s, CandidateMatch) == 0


# ------------------------------------------------------------------------------------ jobs


def test_create_job_is_idempotent(database):
    with database.session() as s:
        job, created = queries.create_job(s, "j1", "getty", "img1", {"top_k": 20})
        assert created and job.status == "pending" and job.attempts == 0
    with database.session() as s:
        job, created = queries.create_job(s, "j1", "getty", "other", {"top_k": 5})
        assert not created
        assert job.image_key == "img1" and job.options == {"top_k": 20}
        assert count(s, Job) == 1


def test_create_job_race_on_same_id_returns_the_winner(database):
    """A second client inserting while the first's insert is uncommitted gets the first's row."""
    first = database.sessionmaker()
    first.begin()
    queries.create_job(first, "race", "getty", "img-first", {})
    result: dict = {}

    def second_client() -> None:
        with database.session() as s:
            job, created = queries.create_job(s, "race", "getty", "img-second", {})
            result.update(created=created, image_key=job.image_key)

    thread = threading.Thread(target=second_client)
    thread.start()
    if database.engine.dialect.name == "postgresql":
        # Wait until the second insert is blocked on our uncommitted row: it will then hit the
        # unique violation, exercising the SAVEPOINT path (not the plain look-up).
        with database.engine.connect() as monitor:
            deadline = time.monotonic() + 10
            while not monitor.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
                assert time.monotonic() < deadline, "second insert never blocked"
                time.sleep(0.02)
    else:
        time.sleep(0.2)  # SQLite: the second client waits for our write lock
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert result == {"created": False, "image_key": "img-first"}
    with database.session() as s:
        assert count(s, Job) == 1


def test_create_job_many_threads_one_winner(database):
    barrier = threading.Barrier(4)
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            with database.session() as s:
                _, created = queries.create_job(s, "same", "getty", f"img{i}", {})
            outcomes.append(created)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(outcomes) == [False, False, False, True]


def test_claim_fail_retry_save_then_done_is_not_rerun(database):
    with database.session() as s:
        queries.create_job(s, "j1", "getty", "img", {})
        assert queries.claim_job(s, "missing", "w1") is None
        assert queries.mark_failed(s, "missing", "x") is None
        with pytest.raises(LookupError):
            queries.save_result(
                s, "missing", x=0, y=0, confidence=0, localised=False, timings={},
                matcher=None, worker=None, candidates=[],
            )  # fmt: skip

    with database.session() as s:
        job = queries.claim_job(s, "j1", "worker-a")
        assert (job.status, job.worker, job.attempts) == ("running", "worker-a", 1)
        assert job.started_at is not None and job.finished_at is None

    with database.session() as s:
        job = queries.mark_failed(s, "j1", "CUDA out of memory", "worker-a")
    assert (job.status, job.error) == ("failed", "CUDA out of memory")
    assert job.finished_at >= job.started_at

    with database.session() as s:
        job = queries.claim_job(s, "j1", "worker-b")  # retry
        assert (job.status, job.worker, job.attempts, job.finished_at) == (
            "running", "worker-b", 2, None,
        )  # fmt: skip

    with database.session() as s:
        queries.save_result(
            s, "j1", x=12.5, y=-3.0, confidence=0.87, localised=True,
            timings={"extract": 0.31, "match": 0.12}, matcher="lightglue", worker="worker-b",
            candidates=[candidate("r1", 30, 0), candidate("r2", 120, 1), candidate("r3", 5, 2)],
        )  # fmt: skip

    with database.session() as s:
        job = queries.get_job(s, "j1")
        assert job.status == "done" and job.error is None
        assert (job.estimate_x, job.estimate_y, job.confidence, job.localised) == (
            12.5, -3.0, 0.87, True,
        )  # fmt: skip
        assert job.timings == {"extract": 0.31, "match": 0.12}
        assert job.matcher == "lightglue"
        assert [c.reference_id for c in queries.get_candidates(s, "j1")] == ["r2", "r1", "r3"]
        assert [c.reference_id for c in job.candidates] == ["r2", "r1", "r3"]

    with database.session() as s:
        job = queries.claim_job(s, "j1", "worker-c")  # redelivered after success
        assert (job.status, job.worker, job.attempts) == ("done", "worker-b", 2)


def test_save_result_twice_does_not_duplicate_candidates(database):
    with database.session() as s:
        queries.create_job(s, "j1", "getty", "img", {})
    first = [candidate("r1", 10, 0), candidate("r2", 20, 1), candidate("r3", 30, 2)]
    second = [candidate("r2", 25, 0), candidate("r4", 40, 1)]
    for cands in (first, first, second):
        with database.session() as s:
            queries.claim_job(s, "j1", "w")
            queries.save_result(
                s, "j1", x=1, y=1, confidence=0.5, localised=True, timings={}, matcher="mnn",
                worker="w", candidates=cands,
            )  # fmt: skip
    with database.session() as s:
        assert [(c.reference_id, c.inliers) for c in queries.get_candidates(s, "j1")] == [
            ("r4", 40), ("r2", 25),
        ]  # fmt: skip
        assert count(s, CandidateMatch) == 2


def test_save_result_is_all_or_nothing(database):
    with database.session() as s:
        queries.create_job(s, "j1", "getty", "img", {})
    # The second row breaks the (job, reference) uniqueness after the first was inserted.
    with pytest.raises(IntegrityError), database.session() as s:
        queries.save_result(
            s, "j1", x=1, y=1, confidence=0.5, localised=True, timings={}, matcher="mnn",
            worker="w", candidates=[candidate("r1", 10, 0), candidate("r1", 5, 1)],
        )  # fmt: skip
    with database.session() as s:
        assert queries.get_job(s, "j1").status == "pending"
        assert count(s, CandidateMatch) == 0


def test_mark_failed_truncates_long_reasons(database):
    with database.session() as s:
        queries.create_job(s, "j1", "getty", "img", {})
        job = queries.mark_failed(s, "j1", "x" * 100_000, None)
    assert job.status == "failed"
    assert len(job.error) == queries.MAX_ERROR_LENGTH and job.error.endswith("...")


def test_list_jobs_filters_and_orders_newest_first(database):
    t0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    with database.session() as s:
        for i, (map_name, status) in enumerate(
            [("getty", "pending"), ("getty", "done"), ("campus", "done"), ("getty", "failed")]
        ):
            job, _ = queries.create_job(s, f"j{i}", map_name, f"img{i}", {})
            job.status = status
            job.created_at = t0 + timedelta(minutes=i)
    with database.session() as s:

        def ids(**kw) -> list[str]:
            return [j.id for j in queries.list_jobs(s, **kw)]

        assert ids() == ["j3", "j2", "j1", "j0"]
        assert ids(map_name="getty") == ["j3", "j1", "j0"]
        assert ids(status="done") == ["j2", "j1"]
        assert ids(map_name="getty", status="done") == ["j1"]
        assert ids(since=t0 + timedelta(minutes=2)) == ["j3", "j2"]
        # The same instant in another zone selects the same rows.
        plus_5 = timezone(timedelta(hours=5))
        assert ids(since=(t0 + timedelta(minutes=2)).astimezone(plus_5)) == ["j3", "j2"]
        assert ids(limit=2) == ["j3", "j2"]
        with pytest.raises(ValueError):
            ids(status="bogus")


def test_find_stale_jobs_goes_by_the_heartbeat(database):
    """A job is stale when its heartbeat stopped, however long ago it started."""
    now = datetime.now(UTC)
    with database.session() as s:
        for job_id in ("stale", "long-alive", "fresh", "no-heartbeat", "old-pending"):
            queries.create_job(s, job_id, "getty", "img", {})
        stale = queries.claim_job(s, "stale", "w")
        stale.started_at = stale.heartbeat_at = now - timedelta(hours=2)
        queries.claim_job(s, "long-alive", "w").started_at = now - timedelta(hours=2)
        queries.claim_job(s, "fresh", "w")
        legacy = queries.claim_job(s, "no-heartbeat", "w")  # a row from before heartbeats
        legacy.started_at, legacy.heartbeat_at = now - timedelta(hours=1), None
        queries.get_job(s, "old-pending").created_at = now - timedelta(days=1)
    with database.session() as s:
        stale_ids = [j.id for j in queries.find_stale_jobs(s, timedelta(minutes=30))]
        assert stale_ids == ["stale", "no-heartbeat"], "oldest sign of life first"
        assert queries.find_stale_jobs(s, timedelta(hours=3)) == []


def test_heartbeat_only_by_the_holder_of_a_running_job(database):
    with database.session() as s:
        queries.create_job(s, "j", "m", "img", {})
        assert not queries.heartbeat(s, "j", "w1"), "pending: nobody holds it"
        job = queries.claim_job(s, "j", "w1")
        job.heartbeat_at = datetime.now(UTC) - timedelta(minutes=5)
    with database.session() as s:
        assert not queries.heartbeat(s, "j", "w2"), "another worker does not hold it"
        assert queries.heartbeat(s, "j", "w1")
    with database.session() as s:
        beat = queries.get_job(s, "j").heartbeat_at
        assert datetime.now(UTC) - beat < timedelta(seconds=30)


def test_timestamps_are_utc_aware_on_read(database):
    before = datetime.now(UTC)
    with database.session() as s:
        queries.create_job(s, "j1", "getty", "img", {})
        queries.claim_job(s, "j1", "w")
        queries.mark_failed(s, "j1", "boom", "w")
    database.engine.dispose()  # read back through a new connection, nothing cached
    with Database(database.url).session() as s:
        job = s.scalars(select(Job)).one()
        for value in (job.created_at, job.started_at, job.finished_at):
            assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
            assert before - timedelta(seconds=1) <= value <= datetime.now(UTC)
        with pytest.raises(StatementError, match="naive datetime"):
            queries.list_jobs(s, since=datetime(2025, 1, 1))


# ------------------------------------------------------------------------------------ maps


def test_upsert_map_adds_only_new_references(database):
    sift = {"name": "sift", "conf": {"max_keypoints": 2048}}
    exhaustive = {"name": "exhaustive", "conf": {}}
    with database.session() as s:
        created = queries.upsert_map(
            s, "getty", sift, exhaustive, [("a", 0, 0), ("b", 1, 1), ("c", 2, 2)]
        )
        assert created.num_references == 3
        created_at = created.created_at
    with database.session() as s:
        vlad = {"name": "vlad", "conf": {"k": 64}}
        # "c" again with another position, "d" twice: only "d" is added, once.
        updated = queries.upsert_map(
            s, "getty", sift, vlad, [("b", 1, 1), ("c", 9, 9), ("d", 3, 3), ("d", 3, 3)]
        )
        assert updated.num_references == 4
    with database.session() as s:
        m = queries.get_map(s, "getty")
        assert m.retriever == vlad and m.extractor == sift
        assert m.created_at == created_at and m.updated_at >= created_at
        refs = {r.ref_id: (r.x, r.y) for r in queries.get_references(s, "getty")}
        assert refs == {"a": (0, 0), "b": (1, 1), "c": (2, 2), "d": (3, 3)}
        queries.upsert_map(s, "campus", sift, exhaustive, [("a", 5, 5)])
    with database.session() as s:
        assert [(m.name, m.num_references) for m in queries.list_maps(s)] == [
            ("campus", 1), ("getty", 4),
        ]  # fmt: skip
        assert queries.get_map(s, "nowhere") is None


def test_upsert_map_bulk_30k_references_is_fast(database):
    refs = [(f"img_{i:05d}", float(i % 600), float(i // 600)) for i in range(30_000)]
    start = time.perf_counter()
    with database.session() as s:
        queries.upsert_map(s, "big", {"name": "sift", "conf": {}}, {"name": "x", "conf": {}}, refs)
    with database.session() as s:
        m = queries.upsert_map(
            s, "big", {"name": "sift", "conf": {}}, {"name": "x", "conf": {}}, refs[:100]
        )
        assert m.num_references == 30_000
        assert count(s, ReferenceImage) == 30_000
    assert time.perf_counter() - start < 30


# --------------------------------------------------------------------- several processes


def _worker_process(url: str, job_ids: list[str], name: str) -> None:
    db = Database(url)  # the engine inherited from the parent must not be reused here
    for job_id in job_ids:
        with db.session() as s:
            queries.claim_job(s, job_id, name)
        with db.session() as s:
            queries.save_result(
                s, job_id, x=1, y=2, confidence=0.5, localised=True, timings={"all": 0.1},
                matcher="mnn", worker=name, candidates=[candidate("r1", 10, 0)],
            )  # fmt: skip


def test_forked_worker_processes_write_concurrently(database):
    job_ids = [f"job{i:02d}" for i in range(24)]
    with database.session() as s:
        for job_id in job_ids:
            queries.create_job(s, job_id, "getty", "img", {})
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_worker_process, args=(database.url, job_ids[i::3], f"w{i}"))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    # The parent's pooled connection survived the children.
    with database.session() as s:
        assert count(s, Job, status="done") == len(job_ids)
        assert count(s, CandidateMatch) == len(job_ids)
        assert {j.worker for j in queries.list_jobs(s)} == {"w0", "w1", "w2"}
