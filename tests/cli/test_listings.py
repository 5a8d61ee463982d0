"""What the listing commands print when piped or logged, and how a job is named: the real CLI
in a subprocess (stdout a pipe, as in a log) on a SQLite file filled through db/queries.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.types import CandidateResult
from db import queries
from db.session import Database, init_db
from tests.support.process import run_cli

# Two jobs sharing their first 9 characters, and a third: full-length ids (workers/client.py
# job_id_for gives 32 hex characters), longer than rich's 80-column layout leaves a cell.
SIBLINGS = ("64fb40c1d" + "a" * 23, "64fb40c1d" + "b" * 23)
LONER = "9e0c" + "c" * 28


def _env(data: Path) -> dict[str, str]:
    """A fresh data dir; no COLUMNS, so the CLI sees what a pipe or a log file gives it."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return {**env, "FEATURELOC_DATA_DIR": str(data)}


def _candidate(ref: str, stage: str, inliers: int) -> CandidateResult:
    return CandidateResult(
        reference_id=ref, position=(1.5, 2.5), retrieval_rank=0, retrieval_score=0.9,
        query_keypoints=500, reference_keypoints=480, tentative_matches=90, inliers=inliers,
        mean_match_score=0.8, stage=stage,
    )  # fmt: skip


@pytest.fixture(scope="module")
def jobs_env(tmp_path_factory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("listings")
    url = f"sqlite:///{(data / 'featureloc.db').resolve()}"
    init_db(url)
    with Database(url).session() as s:
        for job_id in (*SIBLINGS, LONER):
            queries.create_job(s, job_id, "campus", "0" * 64, {})
        queries.claim_job(s, LONER, "host:1")
        queries.save_result(
            s, LONER, x=1.5, y=2.5, confidence=0.9, localised=True, timings={"total": 0.5},
            matcher="mnn", worker="host:1",
            candidates=[_candidate("ref_coarse", "coarse", 40), _candidate("ref_fine", "fine", 60)],
        )  # fmt: skip
    return _env(data)


def _ok(env: dict[str, str], *args: str) -> str:
    out = run_cli(env, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_piped_tables_keep_whole_ids(jobs_env):
    listed = _ok(jobs_env, "jobs", "list")
    for job_id in (*SIBLINGS, LONER):
        assert job_id in listed, listed
    assert "…" not in listed


def test_jobs_show_takes_any_unique_start_of_an_id(jobs_env):
    shown = _ok(jobs_env, "jobs", "show", LONER[:6])
    assert f"job {LONER}" in shown
    as_json = json.loads(_ok(jobs_env, "jobs", "show", SIBLINGS[0][:10], "--json"))
    assert as_json["id"] == SIBLINGS[0]

    ambiguous = run_cli(jobs_env, "jobs", "show", SIBLINGS[0][:9])
    said = " ".join(ambiguous.stderr.split())
    assert ambiguous.returncode == 1 and "ambiguous" in said, said
    assert SIBLINGS[0] in said and SIBLINGS[1] in said and LONER not in said
    for unknown in ("ffff", "64fb40c1d_", "%"):  # LIKE's wildcards are taken literally
        out = run_cli(jobs_env, "jobs", "show", unknown)
        assert out.returncode == 1 and "unknown job" in out.stderr, (unknown, out.stderr)


def test_jobs_show_says_which_stage_found_each_candidate(jobs_env):
    shown = _ok(jobs_env, "jobs", "show", LONER)
    table = [_cells(line) for line in shown.splitlines() if "│" in line or "┃" in line]
    header = table[0]
    assert header[:3] == ["stage", "rank", "reference"], header
    assert {row[2]: row[0] for row in table[1:]} == {"ref_fine": "fine", "ref_coarse": "coarse"}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]


def test_a_bad_status_is_a_usage_error_not_a_traceback(jobs_env):
    for command in (["jobs", "list"], ["jobs", "export"]):
        out = run_cli(jobs_env, *command, "--status", "bogus")
        said = " ".join(out.stderr.replace("│", " ").split())  # typer's error box
        assert out.returncode == 2 and "Traceback" not in said, said
        assert "'bogus' is not one of pending, running, done, failed" in said
    only_done = [json.loads(line) for line in _ok(jobs_env, "jobs", "list", "--status", "done",
                                                  "--json").splitlines()]  # fmt: skip
    assert [j["id"] for j in only_done] == [LONER]


@pytest.mark.parametrize(
    "command",
    [
        ["jobs", "list"],
        ["jobs", "dead-letters"],
        ["map", "list"],
        ["map", "builds"],
        ["apikey", "list"],
    ],
)
def test_every_listing_command_prints_json_lines(jobs_env, command):
    lines = _ok(jobs_env, *command, "--json").splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) for r in rows)
    if command == ["jobs", "list"]:
        assert sorted(r["id"] for r in rows) == sorted((*SIBLINGS, LONER))
