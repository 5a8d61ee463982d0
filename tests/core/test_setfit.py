"""The photo sets' confidence curve (core/setfit.py), fitted on the synthetic scene's own
positions: measured, resumed, kept by a later single-photo fit, and read by localise_set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.calibration import calibrate
from core.heldout import fit_map
from core.localiser import Localiser
from core.photoset import localise_set
from core.setfit import SETS_FILE, fit_sets, read_set_rows
from tests.core.test_photoset import _positions, _views

pytestmark = pytest.mark.integration

POSITIONS = 3
SUBSETS = 11  # of the scene's 4 views per position: 6 pairs, 4 triples, 1 of all four


def _image_of(scene: Path):
    return lambda rid: next((scene / "images").glob(f"{rid}.*"))


def test_the_set_curve_is_fitted_kept_and_used(copy_scene_map, scene: Path) -> None:
    store, image_of = copy_scene_map(), _image_of(scene)
    fit_map(store, "scene", image_of, queries=4)
    figures = fit_sets(store, "scene", image_of, POSITIONS, Localiser(store.open("scene")))
    assert figures["positions"] == POSITIONS and figures["subsets"] == POSITIONS * SUBSETS
    assert set(figures["by_size"]) == {"2", "3", "4"}
    assert all(0.0 <= v["within_5"] <= 1.0 for v in figures["by_size"].values())
    record = store.training("scene")
    curve = record["calibration"]["set"]
    assert record["set_fit"] == figures and curve["x"] == sorted(curve["x"])
    rows_file = store.path("scene") / SETS_FILE
    rows = read_set_rows(rows_file)
    assert len(rows) == POSITIONS and all(len(r.subsets) == SUBSETS for r in rows)
    ref_map = store.open("scene")
    for r in rows:  # each set's views are of one position
        assert len({tuple(ref_map.positions[ref_map.index[rid]]) for rid in r.reference_ids}) == 1

    # Resumed: nothing measured twice.
    lines = rows_file.read_text()
    again = fit_sets(store, "scene", image_of, POSITIONS, Localiser(store.open("scene")))
    assert again == figures and rows_file.read_text() == lines

    # A later single-photo fit keeps the set curve.
    fit_map(store, "scene", image_of, queries=5)
    kept = store.training("scene")
    assert kept["heldout_queries"] == 5 and kept["calibration"]["set"] == curve

    # A set's confidence goes through the set curve, the raw figure being the pooled one.
    loc = Localiser(store.open("scene"))
    views = _views(*_positions(scene)[0], [0.0, 120.0, 240.0], seed=0)
    raw = localise_set(loc, views, calibrated=False)
    told = localise_set(loc, views)
    assert told.calibrated and not raw.calibrated
    assert told.estimate.confidence == pytest.approx(calibrate(curve, raw.estimate.confidence))
    json.dumps(kept)  # the record stays plain JSON


def test_a_map_with_one_view_per_position_has_no_sets(scene: Path, tmp_path: Path) -> None:
    from core.mapbuild import build_map, read_positions_csv
    from core.mapstore import MapStore

    entries = read_positions_csv(scene / "references.csv", scene / "images")
    first_views = {}
    for e in entries:
        first_views.setdefault((e.reference.x, e.reference.y), e)
    store = MapStore(tmp_path)
    build_map(store, "single", list(first_views.values())[:6], "sift", retriever_name="exhaustive")
    loc = Localiser(store.open("single"))
    with pytest.raises(ValueError, match="no position with two views"):
        fit_sets(store, "single", _image_of(scene), 2, loc)
    with pytest.raises(ValueError, match="not map 'other'"):  # rows and record in one map
        fit_sets(store, "other", _image_of(scene), 2, loc)
