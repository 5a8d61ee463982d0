"""`featureloc map fit` on a map fitted before it had a fine set, as a user runs it: real
processes, a SQLite file, real XFeat and ALIKED on a corner of the synthetic scene. A file of
its own (the longest CLI test) so that `make test` runs it beside the other fit tests."""

from __future__ import annotations

import json

import pytest

from core.defaults import HELDOUT_FINE_BELOW
from core.heldout import HELDOUT_FILE, read_rows
from core.mapstore import MapStore
from tests.cli.test_map_fit import _cli, cli_env

pytestmark = pytest.mark.integration


def test_a_map_fitted_before_its_fine_set_is_told_what_to_do(tmp_path_factory, scene) -> None:
    """Fit, then a fine set, then fit again: each step says what it did and what is missing,
    and the second fit measures the fine stage on the positions the first did without it."""
    env, data, positions = cli_env(tmp_path_factory, scene)
    store = MapStore(data / "maps")
    built = _cli(env, "map", "build", "plain", "--images", str(scene / "images"),
                 "--positions", str(positions))  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    first = _cli(env, "map", "fit", "plain", "--queries", "3")
    assert first.returncode == 0, first.stdout + first.stderr
    told = " ".join(first.stdout.split())  # rich wraps long lines
    assert "(3 measured now, 0 measured again for the fine stage)" in told
    assert "fine stage not fitted: the map has no fine set" in told
    assert "featureloc map fine plain" in told and "escalate below" not in told
    record = json.loads((store.path("plain") / "training.json").read_text())
    assert "escalate_below" not in record and set(record["calibration"]) == {"coarse"}

    fine = _cli(env, "map", "fine", "plain")
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert "featureloc map fit plain" in " ".join(fine.stdout.split())
    held = store.path("plain") / HELDOUT_FILE
    doubtful = [r for r in read_rows(held) if r.coarse_score < HELDOUT_FINE_BELOW]
    again = _cli(env, "map", "fit", "plain", "--queries", "3")
    assert again.returncode == 0, again.stdout + again.stderr
    told = " ".join(again.stdout.split())
    assert f"(0 measured now, {len(doubtful)} measured again for the fine stage)" in told
    rows = read_rows(held)
    assert len(rows) == 3 and all(r.fine_tried for r in rows if r.coarse_score < HELDOUT_FINE_BELOW)
