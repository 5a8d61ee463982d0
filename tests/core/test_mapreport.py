"""The map report (core/mapreport.py) and its figures (core/mapfigures.py) on a made-up site
whose answer is known: a grid of positions with a gap in the middle (a coverage hole), one
corner whose held-out views fail (the place to add photos), a few positions not measured; and
the held-out bookkeeping behind it (core/heldout.py): every position in one fixed order, and
rows measured again only near references added since."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from core.errors import InputError
from core.evaluation import HIT_RADIUS
from core.heldout import HeldoutRow, fit, reference_generations, sample_heldout, stale_ids
from core.mapfigures import WIDTH, _site, error_colour, report_figures
from core.mapreport import (
    HOLE_SPACINGS,
    SCHEMA_VERSION,
    MapReport,
    area_of,
    build_report,
)
from core.mapstore import ReferenceMap

STEP = 2.0  # the grid's spacing
GAP = (12.0, 8.0)  # the middle of the gap
BAD = (0.0, 0.0)  # the corner that fails


def _site_positions() -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(0, 26, STEP), np.arange(0, 18, STEP))
    grid = np.column_stack([xs.ravel(), ys.ravel()])
    keep = np.abs(grid - GAP).max(axis=1) > 6.5  # a 7 x 7 block of positions left out
    return grid[keep]


def _rows(positions: np.ndarray, unmeasured: int = 3) -> list[HeldoutRow]:
    """One row per position but the last ``unmeasured``: the BAD corner's answers are 30 off
    with low scores, the others 1 off with high scores."""
    rows = []
    for i, (x, y) in enumerate(positions[:-unmeasured]):
        bad = np.abs(np.array([x, y]) - BAD).max() < 5
        err, score = (30.0, 0.1 + 0.01 * (i % 5)) if bad else (1.0, 0.7 + 0.01 * (i % 5))
        rows.append(HeldoutRow(f"r{i}_0", x, y, x + err, y, score, matched=f"r{(i + 7) % 50}_0"))
    return rows


@pytest.fixture(scope="module")
def report() -> MapReport:
    positions = _site_positions()
    rows = _rows(positions)
    training = fit(rows, fallback=(12.0, 8.0))
    # Each position twice (two views): a position counts once in the report.
    both = np.concatenate([positions, positions])
    return build_report("site", both, rows, training)


def test_every_position_has_one_entry_and_unmeasured_ones_say_so(report) -> None:
    positions = _site_positions()
    assert report.schema == SCHEMA_VERSION and report.map == "site"
    assert report.positions_total == len(report.positions) == len(positions)
    assert report.positions_measured == len(positions) - 3 == report.views_measured
    assert sum(p.error is None and p.localised is None for p in report.positions) == 3
    bad = [p for p in report.positions if p.error is not None and p.error > HIT_RADIUS]
    assert bad and all(abs(p.x - BAD[0]) < 5 and abs(p.y - BAD[1]) < 5 for p in bad)
    # The calibration learnt that low scores fail: those positions are declined, the rest not.
    assert all(p.localised is False for p in bad)
    good = [p for p in report.positions if p.error is not None and p.error < HIT_RADIUS]
    assert good and all(p.localised for p in good)
    assert report.mae == pytest.approx((30 * len(bad) + len(good)) / report.views_measured)


def test_the_failing_corner_is_the_first_suggestion(report) -> None:
    first = report.suggestions[0]
    assert first.rank == 1 and first.mae > report.mae and first.failed >= 3
    assert abs(first.x - BAD[0]) < 5 and abs(first.y - BAD[1]) < 5
    area = area_of(report, first.x, first.y)
    assert area is not None and area.mae == pytest.approx(first.mae)
    assert all(s.mae > report.mae for s in report.suggestions)


def test_the_gap_is_a_hole_and_the_rest_is_covered(report) -> None:
    assert report.spacing == pytest.approx(STEP)
    assert report.hole_distance == pytest.approx(HOLE_SPACINGS * STEP)
    assert len(report.holes) == 1
    hole = report.holes[0]
    assert abs(hole.x - GAP[0]) <= STEP and abs(hole.y - GAP[1]) <= STEP
    assert hole.distance > report.hole_distance and hole.area > 0
    # Asked for holes closer in, the gap is larger; far enough out, there is none.
    assert build_report_with(report, hole_distance=1.5 * STEP).holes[0].area > hole.area
    assert build_report_with(report, hole_distance=4 * STEP).holes == []


def build_report_with(report: MapReport, **kwargs) -> MapReport:
    positions = _site_positions()
    rows = _rows(positions)
    return build_report("site", positions, rows, fit(rows, fallback=(12.0, 8.0)), **kwargs)


def test_the_json_has_its_stated_schema(report) -> None:
    data = json.loads(json.dumps(report.to_json()))
    assert {"schema", "positions", "holes", "suggestions", "areas", "worst", "reliability"} <= set(
        data
    )
    assert set(data["positions"][0]) == {"x", "y", "views_measured", "error", "localised",
                                         "confidence"}  # fmt: skip
    assert set(data["holes"][0]) == {"x", "y", "distance", "area"}
    assert set(data["suggestions"][0]) == {"rank", "x", "y", "mae", "positions", "failed", "area"}
    worst = data["worst"][0]
    assert worst["error"] == pytest.approx(30.0) and worst["matched"].startswith("r")
    assert sum(b["count"] for b in data["reliability"]) == report.views_measured


def test_nothing_to_report_is_a_clear_error() -> None:
    positions = _site_positions()
    with pytest.raises(InputError, match="has not been measured"):
        build_report("site", positions, [], {})
    rows = _rows(positions)
    with pytest.raises(InputError, match="no fit"):
        build_report("site", positions, rows, {})
    with pytest.raises(InputError, match="no fine part"):
        build_report("site", positions, rows, fit(rows, (0.0, 0.0)), profile="accurate")


def test_the_figures_draw_the_errors_where_they_are(report) -> None:
    figures = report_figures(report, lambda _rid: None)  # no photos: blank panels
    assert set(figures) == {"plan", "coverage", "reliability", "worst"}
    images = {k: cv2.imdecode(np.frombuffer(v, np.uint8), cv2.IMREAD_COLOR) for k, v in
              figures.items()}  # fmt: skip
    assert all(im is not None and im.shape[1] == WIDTH for im in images.values())
    plot = _site(report)
    for p in report.positions:
        if p.error is None:
            continue
        x, y = plot.px(p.x, p.y)
        drawn = images["plan"][y, x].astype(int)
        assert np.abs(drawn - error_colour(p.error)).max() < 30, (p, drawn)


def _ref_map(tmp_path, positions, views: int = 2) -> ReferenceMap:
    ids = [f"p{i:03d}_{v}" for i in range(len(positions)) for v in range(views)]
    pos = np.repeat(np.asarray(positions, np.float64), views, axis=0)
    return ReferenceMap(tmp_path, {"name": "m"}, ids, pos)


def test_every_position_starts_with_the_default_sample(tmp_path) -> None:
    ref_map = _ref_map(tmp_path, _site_positions(), views=3)
    every = sample_heldout(ref_map, None)
    groups = {tuple(ref_map.positions[r]) for r in every}
    assert len(every) == len(groups) == len(_site_positions())
    assert sample_heldout(ref_map, 20) == every[:20]
    all_views = sample_heldout(ref_map, None, views=3)
    assert all_views[: len(every)] == every and sorted(all_views) == list(range(len(ref_map)))


def test_rows_are_measured_again_only_near_new_references(tmp_path) -> None:
    positions = _site_positions()
    before = _ref_map(tmp_path, positions)
    assert reference_generations(before) == (0, dict.fromkeys(before.ids, 0))
    rows = [HeldoutRow(rid, *before.positions[i], 0.0, 0.0, 0.5)
            for i, rid in enumerate(before.ids) if rid.endswith("_0")]  # fmt: skip
    assert stale_ids(before, rows, reference_generations(before)[1]) == set()
    # One new position at the far corner: only rows within 3 spacings of it are stale.
    corner = np.array([[24.0, 16.0]])
    grown = _ref_map(tmp_path, np.concatenate([positions, corner]))
    generation, added = reference_generations(grown)
    assert generation == 1 and added[grown.ids[-1]] == 1 and added[grown.ids[0]] == 0
    stale = stale_ids(grown, rows, added)
    near = {r.reference_id for r in rows if np.abs(np.array([r.truth_x, r.truth_y]) - corner)
            .max() <= 2 * STEP}  # fmt: skip
    assert near and near <= stale
    assert all(np.hypot(r.truth_x - 24, r.truth_y - 16) <= 3 * STEP + 1e-9 for r in rows
               if r.reference_id in stale)  # fmt: skip
    # A row measured since (of the new generation) is not measured again.
    again = [dataclasses.replace(r, generation=1) if r.reference_id in stale else r for r in rows]
    assert stale_ids(grown, again, added) == set()
    assert reference_generations(grown)[0] == 1  # nothing new: the same generation
