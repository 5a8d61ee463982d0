"""The featureloc command as a user runs it: real processes, real Redis, a SQLite file."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.process import run_cli
from tests.support.services import WorkerProcess, require_redis, service_env

pytestmark = pytest.mark.integration


def _cli(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = run_cli(env, *args, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"featureloc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _build_small(env: dict, scene: Path, positions: Path) -> subprocess.CompletedProcess:
    return _cli(
        env,
        "map",
        "build",
        "small",
        "--images",
        str(scene / "images"),
        "--positions",
        str(positions),
        "--extractor",
        "sift",
        "--retriever",
        "exhaustive",
    )


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory, scene):
    """A data dir with map 'small' built through the CLI from 6 positions of the scene."""
    require_redis()
    data = tmp_path_factory.mktemp("cli")
    env = service_env(data, f"sqlite:///{data / 'fl.db'}", uuid.uuid4().hex[:8])
    env["COLUMNS"] = "200"  # rich wraps tables at the terminal width
    with (scene / "references.csv").open() as f:
        rows = list(csv.DictReader(f))[:24]
    positions = data / "refs.csv"
    with positions.open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "x", "y"])
        w.writeheader()
        w.writerows(rows)
    out = _build_small(env, scene, positions)
    assert "24 added" in out.stdout
    return env, data, rows


def test_map_build_again_adds_nothing_and_lists(cli_env, scene):
    env, data, _ = cli_env
    out = _build_small(env, scene, data / "refs.csv")
    assert "0 added, 24 already there" in out.stdout
    listing = _cli(env, "map", "list").stdout
    row = next(line for line in listing.splitlines() if " small " in line)
    cells = [c.strip() for c in re.split("[│|]", row) if c.strip()]  # rich's table cells
    assert cells[:4] == ["small", "24", "sift", "exhaustive"], listing


def test_map_camera_records_shows_refuses_and_clears(cli_env):
    env, _, _ = cli_env
    try:
        out = _cli(env, "map", "camera", "small", "--fov-x", "73.7", "--fov-y", "53.1").stdout
        assert '"fov_x_deg":73.7' in out and '"fov_y_deg":53.1' in out
        assert "featureloc map geometry small" in " ".join(out.split())  # no pair frames yet
        assert '"fov_x_deg":73.7' in _cli(env, "map", "camera", "small").stdout
        bad = _cli(env, "map", "camera", "small", "--fx", "500", check=False)
        assert bad.returncode == 1 and "width and height" in bad.stderr
        assert '"fov_x_deg":73.7' in _cli(env, "map", "camera", "small").stdout  # unchanged
        unknown = _cli(env, "map", "camera", "nope", "--fov-x", "60", check=False)
        assert unknown.returncode == 1 and "unknown map" in unknown.stderr
    finally:
        out = _cli(env, "map", "camera", "small", "--clear").stdout
    assert "has no camera" in out


def test_map_build_refuses_a_bad_csv_and_creates_nothing(cli_env, scene, tmp_path):
    env, data, _ = cli_env
    bad = tmp_path / "bad.csv"
    bad.write_text("id,x,y\nref_0000_0,1,nan\nghost,1,2\n")
    out = _cli(
        env,
        "map",
        "build",
        "broken",
        "--images",
        str(scene / "images"),
        "--positions",
        str(bad),
        check=False,
    )
    assert out.returncode != 0
    assert "non-finite" in out.stderr and "no image for id 'ghost'" in out.stderr
    assert not (data / "maps" / "broken").exists()


def test_localise_wait_and_inspect_jobs(cli_env, scene):
    env, data, rows = cli_env
    worker = WorkerProcess(env, data / "worker.log").start()
    try:
        image = scene / "images" / f"{rows[9]['id']}.jpg"
        _cli(env, "localise", str(image), "--map", "small", "--wait", "--timeout", "120")
        bad = _cli(env, "localise", str(image), "--map", "small", "--option", "nope=1", check=False)
        assert bad.returncode != 0 and "bad options" in bad.stderr
    finally:
        worker.stop()
    listed = _cli(
        env, "jobs", "list", "--map", "small", "--status", "done", "--since", "1h", "--json"
    ).stdout
    jobs = [json.loads(line) for line in listed.splitlines()]
    # The job --wait waited for is done (--status done), with nothing else listed.
    assert len(jobs) == 1 and jobs[0]["map_name"] == "small"
    job_id = jobs[0]["id"]
    shown = json.loads(_cli(env, "jobs", "show", job_id, "--json").stdout)
    assert shown["status"] == "done" and shown["localised"]
    assert (shown["x"], shown["y"]) == (float(rows[9]["x"]), float(rows[9]["y"]))
    assert shown["candidates"][0]["reference_id"] == rows[9]["id"]
    assert shown["profile_used"] == "fast" and shown["calibrated"] is False
    told = _cli(env, "jobs", "show", job_id).stdout
    assert "profile fast" in told and "confidence UNCALIBRATED" in told  # the map is unfitted


def test_localise_a_set_is_one_job_and_a_bad_set_is_refused(cli_env, scene):
    """``localise a b c --set`` queues one job for the three photos; a yaw list of the wrong
    length, or yaws without --set, are refused with the reason and queue nothing."""
    env, _, rows = cli_env
    photos = [str(scene / "images" / f"{rows[k]['id']}.jpg") for k in (8, 9, 10)]
    yaws = ["--yaw", "0", "--yaw", "90"]
    short = _cli(env, "localise", *photos, "--map", "small", "--set", *yaws, check=False)
    assert short.returncode == 1 and "2 yaw(s) for 3 photos" in short.stderr
    loose = _cli(env, "localise", *photos, "--map", "small", *yaws, check=False)
    assert loose.returncode == 1 and "--yaw needs --set" in loose.stderr
    out = _cli(env, "localise", *photos, "--map", "small", "--set", *yaws, "--yaw", "180").stdout
    lines = out.strip().splitlines()
    assert len(lines) == 1 and " + ".join(Path(p).name for p in photos) in lines[0]
    shown = json.loads(_cli(env, "jobs", "show", lines[0].split()[0], "--json").stdout)
    assert shown["status"] == "pending" and shown["map_name"] == "small"


def test_evaluate_writes_a_report(cli_env, scene):
    env, data, rows = cli_env
    # The map's own views as queries: each must be found exactly at its own position.
    queries = data / "queries.csv"
    with queries.open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "x", "y"])
        w.writeheader()
        w.writerows(rows[:3])
    report = data / "eval.json"
    out = _cli(
        env,
        "evaluate",
        "--map",
        "small",
        "--queries",
        str(queries),
        "--images",
        str(scene / "images"),
        "--report",
        str(report),
        "--top-k",
        "24",
    )
    assert "MAE" in out.stdout
    result = json.loads(report.read_text())
    assert result["summary"]["queries"] == 3 and result["summary"]["mae"] == 0.0
    assert [r["id"] for r in result["rows"]] == [r["id"] for r in rows[:3]]
    assert all(r["candidates"] > 0 and r["error"] == 0.0 for r in result["rows"])
    assert result["config"]["map"] == "small"


def test_evaluate_scores_a_set_once(cli_env, scene):
    """Rows sharing a ``set`` value are one job, one report row under the set's name."""
    env, data, rows = cli_env
    queries = data / "set_queries.csv"
    with queries.open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "x", "y", "set"])
        w.writeheader()
        w.writerows([{**r, "set": "spot"} for r in rows[:3]] + [{**rows[4], "set": ""}])
    report = data / "set_eval.json"
    _cli(
        env,
        "evaluate",
        "--map",
        "small",
        "--queries",
        str(queries),
        "--images",
        str(scene / "images"),
        "--report",
        str(report),
    )
    result = json.loads(report.read_text())
    assert [r["id"] for r in result["rows"]] == ["spot", rows[4]["id"]]
    spot = result["rows"][0]
    assert spot["method"].startswith("set:") and spot["error"] < 1e-6
    assert (spot["truth_x"], spot["truth_y"]) == (float(rows[0]["x"]), float(rows[0]["y"]))
