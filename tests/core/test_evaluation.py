"""Evaluation metrics on a tiny constructed case with a fake localiser over known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.evaluation import bootstrap_ci, evaluate, first_rank_within
from core.types import CandidateResult, Estimate, LocalisationResult


def cand(x: float, y: float, inliers: int, rank: int) -> CandidateResult:
    return CandidateResult(f"r{rank}", (x, y), rank, 0.5, 100, 100, 50, inliers, 0.9, 0.0, 0.0)


# Truth is (0, 0) for every query; each answer is what the "localiser" returns for that path.
ANSWERS = {
    "q1": LocalisationResult(  # exact
        Estimate(0.0, 0.0, 0.9, True, "t"), [cand(0, 1, 80, 0), cand(40, 0, 10, 1)], {}, {}
    ),
    "q2": LocalisationResult(  # 3 away; the near reference is at rank 1
        Estimate(2.0, -1.0, 0.6, True, "t"), [cand(30, 0, 20, 0), cand(2, -1, 60, 1)], {}, {}
    ),
    "q3": LocalisationResult(  # declined: scored at its best candidate (12 away)
        Estimate(None, None, 0.1, False, "t"), [cand(12, 0, 30, 0), cand(50, 0, 40, 1)], {}, {}
    ),
    "q4": LocalisationResult(Estimate(None, None, 0.0, False, "t"), [], {}, {}),  # no candidates
}


def fake_localiser(path: Path) -> LocalisationResult:
    return ANSWERS[path.stem]


def test_evaluate_rows_and_summary():
    queries = [(q, Path(f"/nowhere/{q}.jpg"), 0.0, 0.0) for q in ANSWERS]
    report = evaluate(fake_localiser, queries, fallback_position=(7.0, 1.0))
    errors = [r.error for r in report.rows]
    # q3 falls back to its candidate with most inliers (50, 0), not the first-ranked one.
    assert errors == [0.0, 3.0, 50.0, 8.0]
    assert [r.fallback for r in report.rows] == ["", "", "best_candidate", "map"]
    s = report.summary
    assert s["mae"] == pytest.approx(61 / 4)
    assert s["median"] == pytest.approx(5.5)
    lo, hi = s["mae_ci95"]
    assert 0.0 <= lo < 61 / 4 < hi <= 50.0
    assert s["within_1"] == 0.25 and s["within_5"] == 0.5 and s["within_10"] == 0.75
    assert s["not_localised"] == 2
    assert s["mae_localised"] == pytest.approx(1.5)
    assert s["mae_top50_confident"] == pytest.approx(1.5)  # q1 and q2 are the most confident
    # Near reference (< 5) at rank 0 for q1, rank 1 for q2; none for q3/q4; lists 0-2 deep.
    assert "recall@1" not in s  # q4 had no candidates: no depth to measure at
    rows = {r.id: r.nearest_rank for r in report.rows}
    assert rows == {"q1": 0, "q2": 1, "q3": None, "q4": None}
    data = json.loads(report.to_json())
    assert data["summary"]["mae"] == pytest.approx(61 / 4) and len(data["rows"]) == 4


def test_recall_at_k_from_shortlists():
    queries = [(q, Path(f"{q}.jpg"), 0.0, 0.0) for q in ("q1", "q2", "q3")]
    shortlists = {
        "q1": [[1, 1], [9, 9], [8, 8], [7, 7], [6, 6]],
        "q2": [[9, 9], [8, 8], [0, 4], [7, 7], [6, 6]],
        "q3": [[9, 9]] * 5,
    }
    arrays = {k: np.array(v) for k, v in shortlists.items()}
    report = evaluate(fake_localiser, queries, (0.0, 0.0), shortlists=arrays)
    s = report.summary
    assert s["recall@1"] == pytest.approx(1 / 3)
    assert s["recall@5"] == pytest.approx(2 / 3)
    assert "recall@10" not in s


def test_first_rank_within_uses_l1_and_strict_radius():

    ranked = np.array([[4.0, 1.0], [3.0, 1.0]])  # L1 5 (not < 5), then 4
    assert first_rank_within(ranked, (0.0, 0.0), 5.0) == 1
    assert first_rank_within(np.zeros((0, 2)), (0.0, 0.0), 5.0) is None


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_queries():
    rng = np.random.default_rng(1)
    # Heavy-tailed like localisation errors: mostly small, a few wrong places far away.
    errors = np.where(rng.random(2000) < 0.1, 100.0, rng.exponential(2.0, 2000))
    lo_small, hi_small = bootstrap_ci(errors[:100])
    lo_big, hi_big = bootstrap_ci(errors)
    assert lo_small < errors[:100].mean() < hi_small
    assert lo_big < errors.mean() < hi_big
    assert hi_big - lo_big < (hi_small - lo_small) / 2  # 20x the queries: ~4.5x narrower
    assert bootstrap_ci(errors[:100]) == (lo_small, hi_small)  # seeded: reproducible
    # Paired: a configuration better by 1 on every query is better with certainty.
    assert bootstrap_ci(np.full(50, -1.0)) == (-1.0, -1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])
