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
