"""Where a not-localised answer is scored: the same rule in process and through the queue."""

from __future__ import annotations

import pytest

from core.evaluation import map_centroid, score_result
from core.types import CandidateResult, Estimate, LocalisationResult


def _declined(candidates: list[CandidateResult]) -> LocalisationResult:
    return LocalisationResult(Estimate(None, None, 0.0, False, "stored", []), candidates, {}, {})


def test_a_declined_answer_without_candidates_is_scored_at_the_map_centroid():
    centroid = map_centroid([(10.0, 20.0), (30.0, 40.0), (50.0, 0.0)])
    assert centroid == (30.0, 20.0)
    row = score_result("q", (31.0, 22.0), _declined([]), 0.0, centroid)
    assert (row.scored_x, row.scored_y, row.fallback) == (30.0, 20.0, "map")
    assert row.error == pytest.approx(3.0) and not row.localised


def test_a_declined_answer_with_candidates_is_scored_at_the_best_candidate():
    best = CandidateResult("b", (5.0, 6.0), 0, 0.5, 100, 100, 40, 30, 0.9, 0.0, 0.0)
    other = CandidateResult("o", (90.0, 90.0), 1, 0.4, 100, 100, 40, 10, 0.9, 0.0, 0.0)
    row = score_result("q", (5.0, 5.0), _declined([other, best]), 0.0, (0.0, 0.0))
    assert (row.scored_x, row.scored_y, row.fallback) == (5.0, 6.0, "best_candidate")


def test_a_map_without_references_has_no_centroid():
    with pytest.raises(ValueError, match="without references"):
        map_centroid([])
