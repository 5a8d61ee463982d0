"""Estimators on hand-built candidate lists: pure functions, so no images needed."""

from __future__ import annotations

import numpy as np
import pytest

from core.estimation import ESTIMATORS, cluster_candidates, pool_places, weighted_median
from core.types import CandidateResult


def cand(rid: str, x: float, y: float, inliers: int, rank: int = 0) -> CandidateResult:
    return CandidateResult(
        reference_id=rid,
        position=(x, y),
        retrieval_rank=rank,
        retrieval_score=0.5,
        query_keypoints=1024,
        reference_keypoints=1024,
        tentative_matches=max(inliers * 2, 1),
        inliers=inliers,
        mean_match_score=0.9,
        match_seconds=0.0,
        verify_seconds=0.0,
    )


# Not the defaults (core/estimation.py ClusterConf): small numbers that make the arithmetic plain.
CONF = {
    "radius": 6.0,
    "inlier_floor": 15,
    "weight_power": 1.0,
    "min_evidence": 10,
    "confidence_scale": 60,
}


def test_cluster_prefers_strongest_place_over_strongest_single_view():
    # A look-alike wall far away has the single largest count (90 inliers), but the true place
    # has three nearby positions that together hold more evidence.
    cands = [
        cand("far", 100.0, 100.0, 90),
        cand("a", 0.0, 0.0, 70),
        cand("b", 3.0, 0.0, 60),
        cand("c", 0.0, 3.0, 50),
        cand("noise", -50.0, 20.0, 18),
    ]
    est = cluster_candidates(cands, CONF)
    assert est.localised
    assert abs(est.x) + abs(est.y) < 3.0  # inside the triangle of the true place
    assert set(est.support) == {"a", "b", "c"}
    assert ESTIMATORS["best"](cands, {}).x == 100.0  # the original rule is fooled


def test_cluster_weighted_mean_lies_between_positions_by_evidence():
    est = cluster_candidates([cand("a", 0.0, 0.0, 15 + 30), cand("b", 4.0, 0.0, 15 + 10)], CONF)
    assert est.x == pytest.approx(1.0)  # 30 : 10 evidence -> a quarter of the way to b
    assert est.y == pytest.approx(0.0)


def test_views_of_one_position_pool_their_evidence():
    pooled = pool_places(
        [cand("q_1", 9.0, 9.0, 10), cand("p_1", 5.0, 5.0, 40), cand("p_2", 5.0, 5.0, 35)], 0, 15
    )
    # q_1 is below the floor: no evidence, and positions with evidence come first
    assert pooled.positions.tolist() == [[5.0, 5.0], [9.0, 9.0]]
    assert pooled.evidence.tolist() == [25 + 20, 0]
    assert [[v.reference_id for v in views] for views in pooled.views] == [["p_1", "p_2"], ["q_1"]]
    assert pooled.order.tolist() == [0, 1]


def test_not_localised_when_evidence_is_weak_or_absent():
    no_guess = {**CONF, "doubt_power": None}
    weak = cluster_candidates([cand("a", 0.0, 0.0, 20), cand("b", 50.0, 0.0, 19)], no_guess)
    assert not weak.localised and weak.x is None
    assert weak.confidence < 0.1
    empty = cluster_candidates([], CONF)
    assert not empty.localised and empty.confidence == 0.0 and empty.x is None


def test_a_declined_answer_guesses_between_weak_views_not_at_the_strongest():
    # No place reaches the evidence to localise. The single view with most inliers is far off
    # (as on blank walls); the guess is the weighted median, where the weak views agree.
    cands = [
        cand("stray", 200.0, -80.0, 17),
        cand("a", 0.0, 0.0, 15),
        cand("b", 2.0, 1.0, 14),
        cand("c", -1.0, 3.0, 14),
        cand("far", -90.0, 60.0, 3),
    ]
    est = cluster_candidates(cands, {**CONF, "min_evidence": 50})
    assert not est.localised and est.method == "cluster:doubt"
    assert ESTIMATORS["best"](cands, {"min_inliers": 0}).x == 200.0
    assert abs(est.x) + abs(est.y) <= 3.0
    # A sharper posterior moves the guess to the strongest view.
    sharp = cluster_candidates(cands, {**CONF, "min_evidence": 50, "doubt_power": 40})
    assert (sharp.x, sharp.y) == (200.0, -80.0)


def test_weighted_median_minimises_the_weighted_l1_distance():
    values = np.array([0.0, 1.0, 5.0, 9.0])
    weights = np.array([1.0, 3.0, 1.0, 2.0])
    m = weighted_median(values, weights)
    cost = [float((weights * np.abs(values - v)).sum()) for v in np.linspace(-1, 10, 111)]
    assert float((weights * np.abs(values - m)).sum()) <= min(cost) + 1e-9


def test_confidence_grows_with_evidence_and_falls_with_a_rival_place():
    confs = [cluster_candidates([cand("a", 0, 0, n)], CONF).confidence for n in (30, 60, 120, 300)]
    assert confs == sorted(confs) and confs[0] < confs[-1] <= 1.0
    alone = cluster_candidates([cand("a", 0, 0, 80)], CONF).confidence
    rival = cluster_candidates([cand("a", 0, 0, 80), cand("r", 60, 60, 75)], CONF).confidence
    assert rival < 0.6 * alone
