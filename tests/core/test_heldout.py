"""The map measures itself (core/heldout.py) and calibrates its confidence
(core/calibration.py)."""

from __future__ import annotations

import numpy as np
import pytest

from core.calibration import calibrate, expected_calibration_error, isotonic
from core.heldout import HeldoutRow, fit, read_rows


def _row(i: int, coarse_err: float, score: float, fine_err: float | None = None,
         fine_score: float | None = None) -> HeldoutRow:  # fmt: skip
    return HeldoutRow(
        reference_id=f"r{i}",
        truth_x=0.0,
        truth_y=0.0,
        coarse_x=coarse_err,
        coarse_y=0.0,
        coarse_score=score,
        fine_x=fine_err,
        fine_y=None if fine_err is None else 0.0,
        fine_score=fine_score,
        fine_switched=None if fine_err is None else False,
    )


def test_fit_escalates_where_the_fine_stage_helps_and_no_further() -> None:
    rows = (
        # Doubtful coarse answers (score < 0.3) that the fine stage fixes ...
        [_row(i, 40.0, 0.1 + 0.01 * i, 1.0, 0.8) for i in range(10)]
        # ... middling ones (0.5-0.6) where it does harm ...
        + [_row(10 + i, 2.0, 0.5 + 0.01 * i, 30.0, 0.2) for i in range(10)]
        # ... and confident ones it was not run on.
        + [_row(20 + i, 1.0, 0.9) for i in range(10)]
    )
    record = fit(rows, fallback=(0.0, 0.0))
    assert 0.19 < record["escalate_below"] <= 0.5
    held = record["heldout"]
    assert held["escalated"] == pytest.approx(1 / 3)
    assert held["mae"] == pytest.approx((10 * 1.0 + 10 * 2.0 + 10 * 1.0) / 30)
    assert held["coarse_mae"] > held["mae"]
    # The budget caps the share of escalated queries.
    capped = fit(rows, fallback=(0.0, 0.0), max_escalated=0.2)
    assert capped["heldout"]["escalated"] <= 0.2


def test_calibration_curves_are_probabilities_that_rise_with_the_score() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 2000)
    hits = rng.uniform(0, 1, 2000) < scores**2  # true P(hit | s) = s^2
    curve = isotonic(scores, hits)
    probs = [calibrate(curve, s) for s in (0.0, 0.3, 0.6, 0.9, 1.0)]
    assert probs == sorted(probs) and probs[0] >= 0 and probs[-1] <= 1
    assert calibrate(curve, 0.5) == pytest.approx(0.25, abs=0.08)
    calibrated = np.array([calibrate(curve, s) for s in scores])
    ece_after, _ = expected_calibration_error(calibrated, hits)
    ece_before, points = expected_calibration_error(scores, hits)
    assert ece_after < 0.03 < ece_before
    assert sum(n for _, _, n in points) == len(scores)


def test_a_line_cut_short_by_a_crash_is_run_again(tmp_path) -> None:
    path = tmp_path / "heldout.jsonl"
    import dataclasses
    import json

    whole = json.dumps(dataclasses.asdict(_row(0, 1.0, 0.5)))
    path.write_text(whole + "\n" + whole[:20] + "\n")
    rows = read_rows(path)
    assert [r.reference_id for r in rows] == ["r0"]


def test_a_row_appended_after_a_cut_line_is_not_lost_with_it(tmp_path) -> None:
    """A run killed mid-write leaves a line without its newline: the next run ends it before
    appending, so its first row is read back (run_heldout does this before its rows)."""
    import dataclasses
    import json

    from core.heldout import _end_cut_line

    path = tmp_path / "heldout.jsonl"
    whole = json.dumps(dataclasses.asdict(_row(0, 1.0, 0.5)))
    path.write_text(whole + "\n" + whole[:20])
    _end_cut_line(path)
    _end_cut_line(path)  # a line already ended is left as it is
    with path.open("a") as f:
        f.write(json.dumps(dataclasses.asdict(_row(1, 2.0, 0.5))) + "\n")
    assert [r.reference_id for r in read_rows(path)] == ["r0", "r1"]
    assert path.read_text().count("\n") == 3


def test_a_fit_without_fine_rows_has_no_fine_part() -> None:
    """A map fitted before it had a fine set: no 0.0 threshold and no all-zero fine curve
    that would later stop the fine stage or zero its confidence."""
    rows = [_row(i, 1.0 + i, 0.1 * i) for i in range(8)]
    record = fit(rows, fallback=(0.0, 0.0))  # the map has no fine set
    assert "escalate_below" not in record
    assert set(record["calibration"]) == {"coarse"}
    assert record["fine_missing"] == "the map has no fine set"
    assert record["heldout"]["mae"] == record["heldout"]["coarse_mae"]
    assert record["heldout"]["fine_run"] == 0 and record["heldout"]["escalated"] == 0.0
    aliked = {"name": "aliked", "conf": {}}
    with_set = fit(rows, fallback=(0.0, 0.0), fine_extractor=aliked)
    assert "escalate_below" not in with_set and with_set["fine_extractor"] == aliked
    assert with_set["fine_missing"] == "no held-out position ran the fine stage"


def test_the_fine_part_of_a_fit_applies_only_to_the_fine_set_it_measured() -> None:
    from core.mapstore import fine_fitted

    aliked = {"name": "aliked", "conf": {}}
    rows = [_row(i, 40.0, 0.1 + 0.01 * i, 1.0, 0.8) for i in range(6)]
    rows += [_row(10 + i, 1.0, 0.9) for i in range(6)]
    record = fit(rows, fallback=(0.0, 0.0), fine_extractor=aliked)
    assert fine_fitted(record, aliked)
    assert not fine_fitted(record, None)  # the map lost its fine set
    assert not fine_fitted(record, {"name": "aliked", "conf": {"max_keypoints": 8}})
    # A record written before fits said so: a 0.0 threshold fitted on no fine row.
    legacy = {**fit(rows[6:], fallback=(0.0, 0.0)), "escalate_below": 0.0}
    legacy.pop("fine_extractor")
    assert not fine_fitted(legacy, aliked)
    assert not fine_fitted({}, aliked)


def test_rows_measured_before_the_fine_set_are_measured_again(tmp_path) -> None:
    import dataclasses
    import json

    doubtful, sure = _row(0, 9.0, 0.2), _row(1, 1.0, 0.9)
    assert doubtful.needs_fine(0.6) and not sure.needs_fine(0.6)
    tried = dataclasses.replace(doubtful, fine_tried=True)  # no view had fine features
    assert not tried.needs_fine(0.6)
    assert not _row(2, 9.0, 0.2, 1.0, 0.7).needs_fine(0.6)  # an old row with a fine answer
    # The row measured again replaces the first in the file (the last line wins).
    again = dataclasses.replace(doubtful, fine_x=1.0, fine_y=0.0, fine_score=0.7, fine_tried=True)
    path = tmp_path / "heldout.jsonl"
    lines = [json.dumps(dataclasses.asdict(r)) for r in (doubtful, sure, again)]
    path.write_text("\n".join(lines) + "\n")
    rows = read_rows(path)
    assert [r.reference_id for r in rows] == ["r0", "r1"] and rows[0].fine_score == 0.7
