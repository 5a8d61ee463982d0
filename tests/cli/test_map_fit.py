"""`featureloc map build --fine`, `map fine` and `map fit` as a user runs them: real processes,
a SQLite file, real XFeat and ALIKED on a corner of the synthetic scene."""

from __future__ import annotations

import csv
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from core.heldout import HELDOUT_FILE, read_rows
from core.mapstore import FINE_SET, MapStore
from tests.support.process import run_cli
from tests.support.services import service_env

pytestmark = pytest.mark.integration


def cli_env(tmp_path_factory, scene: Path) -> tuple[dict, Path, Path]:
    """A CLI environment of its own (SQLite file, maps folder) and the positions of the scene's
    first 4 positions (16 photos) as a CSV: (env, data folder, positions file)."""
    data = tmp_path_factory.mktemp("fit")
    env = service_env(data, f"sqlite:///{data / 'fl.db'}", uuid.uuid4().hex[:8])
    with (scene / "references.csv").open() as f:
        rows = list(csv.DictReader(f))[:16]
    positions = data / "refs.csv"
    with positions.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "x", "y"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("id", "x", "y")} for r in rows)
    return env, data, positions


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return run_cli(env, *args, timeout=600)


@pytest.fixture(scope="module")
def small(tmp_path_factory, scene) -> tuple[dict, Path, MapStore]:
    """Map 'small' of 4 positions (16 photos), built with its fine set."""
    env, data, positions = cli_env(tmp_path_factory, scene)
    built = _cli(env, "map", "build", "small", "--images", str(scene / "images"),
                 "--positions", str(positions), "--fine")  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    return env, data, MapStore(data / "maps")


def test_build_with_fine_features_then_refuses_nothing_twice(small) -> None:
    env, _, store = small
    ref_map = store.open("small")
    assert ref_map.fine_extractor["name"] == "aliked"
    assert ref_map.feature_set(FINE_SET).count() == len(ref_map) == 16
    again = _cli(env, "map", "fine", "small")  # the recorded photo folder; all done already
    assert again.returncode == 0, again.stderr
    assert "added for 0, 16 had them, 0 failed" in again.stdout


def test_fit_writes_the_training_record_and_resumes(small) -> None:
    env, _, store = small
    first = _cli(env, "map", "fit", "small", "--queries", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    path = store.path("small")
    record = json.loads((path / "training.json").read_text())
    assert record["heldout_queries"] == 2 and record["queries"] == 2
    assert len(read_rows(path / HELDOUT_FILE)) == 2
    # More positions: the two done are kept, two more run.
    # With photo sets measured at one position (core/setfit.py).
    more = _cli(env, "map", "fit", "small", "--queries", "4", "--sets", "1")
    assert more.returncode == 0, more.stderr
    rows = read_rows(path / HELDOUT_FILE)
    assert len(rows) == 4 and len({r.reference_id for r in rows}) == 4
    record = json.loads((path / "training.json").read_text())
    assert record["heldout_queries"] == 4 and "set" in record["calibration"]
    assert record["set_fit"]["positions"] == 1 and record["set_fit"]["subsets"] == 11
    told = " ".join(more.stdout.split())
    assert "set confidence fitted on 11 sets at 1 positions" in told
    for bad, says in (
        (["--sets", "-1"], "--sets must be"),
        (["--sets", "1", "--via-queue"], "--sets runs here"),
    ):
        refused = _cli(env, "map", "fit", "small", *bad)
        assert refused.returncode != 0 and says in refused.stdout + refused.stderr


def test_fit_needs_the_photos(small, tmp_path) -> None:
    env, _, _ = small
    bad = _cli(env, "map", "fit", "small", "--images", str(tmp_path))
    assert bad.returncode != 0
    assert "have no photo in" in bad.stdout + bad.stderr


def test_map_geometry_needs_the_camera_then_builds_and_resumes(small) -> None:
    env, _, store = small
    refused = _cli(env, "map", "geometry", "small")
    assert refused.returncode != 0 and "no camera" in refused.stdout + refused.stderr
    assert store.open("small").geometry.count() == 0
    assert _cli(env, "map", "camera", "small", "--fov-x", "74").returncode == 0
    built = _cli(env, "map", "geometry", "small")  # the pair frames placement reads
    assert built.returncode == 0, built.stdout + built.stderr
    assert "geometry built for 16 references" in built.stdout
    assert store.open("small").pair_frames.count() == 16
    assert store.open("small").geometry.count() == 0  # headings and points: only with --pose
    posed = _cli(env, "map", "geometry", "small", "--pose")
    assert posed.returncode == 0 and "geometry built for 16 references" in posed.stdout
    assert store.open("small").geometry.count() == 16
    again = _cli(env, "map", "geometry", "small", "--pose")  # all built: nothing to do
    assert again.returncode == 0 and "geometry built for 0 references" in again.stdout
