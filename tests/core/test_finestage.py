"""The fine stage's choices (core/finestage.py): which places and views it re-verifies, and
when its evidence moves the answer."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.estimation import BestConf, ClusterConf, cluster_candidates
from core.finestage import (
    FineConf,
    FineMatch,
    decide,
    place_estimate,
    place_rule,
    takes_over,
    top_places,
)
from core.types import CandidateResult


def _cand(rid: str, x: float, y: float, inliers: int, score: float = 0.5) -> CandidateResult:
    return CandidateResult(
        reference_id=rid,
        position=(x, y),
        retrieval_rank=0,
        retrieval_score=score,
        query_keypoints=1024,
        reference_keypoints=1024,
        tentative_matches=inliers + 10,
        inliers=inliers,
        mean_match_score=0.9,
        match_seconds=0.0,
        verify_seconds=0.0,
    )


ROWS = {"a1": 0, "a2": 1, "a3": 2, "b1": 3, "b2": 4, "c1": 5}


def _places(cands, **kw):
    args = {"radius": 9.0, "inlier_floor": 20.0, "places": 3, "views": 2, **kw}
    return top_places(cands, ROWS.__getitem__, **args)


def test_places_are_ranked_by_pooled_evidence_and_keep_their_best_views() -> None:
    cands = [
        _cand("a1", 0, 0, 50),  # place A: 30 + 25 + 5 above the floor = 60 pooled
        _cand("a2", 0, 0, 45),
        _cand("a3", 2, 0, 25),  # within the radius of A: same place
        _cand("b1", 100, 0, 70),  # place B: one strong view, 50 pooled
        _cand("c1", 0, 100, 21),
    ]
    places = _places(cands)
    assert [p.seed for p in places] == [(0.0, 0.0), (100.0, 0.0), (0.0, 100.0)]
    assert places[0].evidence == pytest.approx(60.0)
    assert places[0].views == (ROWS["a1"], ROWS["a2"])  # the two with most inliers
    assert places[1].views == (ROWS["b1"],)


def test_weak_candidates_still_form_places_ranked_by_their_best_view() -> None:
    cands = [_cand("a1", 0, 0, 8), _cand("b1", 50, 0, 15), _cand("c1", 100, 0, 3)]
    places = _places(cands, places=2, views=1)
    assert [p.views for p in places] == [(ROWS["b1"],), (ROWS["a1"],)]


def test_place_zero_is_where_the_cluster_estimator_answers() -> None:
    # a3 lies between two places and sees both; with no evidence of its own it seeds no place
    # ahead of them, so place 0 is the estimator's place (A), not a merge of A and B around a3.
    cands = [_cand("a1", 0, 0, 50), _cand("b1", 16, 0, 45), _cand("a3", 8, 0, 10)]
    estimate = cluster_candidates(cands, {"radius": 9.0, "inlier_floor": 20.0})
    places = _places(cands, views=1)
    assert estimate.x == pytest.approx(0.0) and places[0].seed == (estimate.x, estimate.y)
    assert places[0].evidence == pytest.approx(30.0)
    assert [p.seed for p in places] == [(0.0, 0.0), (16.0, 0.0)]  # a3 joined place 0


def test_places_take_the_estimators_radius_and_floor_unless_the_job_sets_them() -> None:
    cluster = ClusterConf.make({"radius": 4.0, "inlier_floor": 30.0})
    assert place_rule(FineConf.make({}), cluster) == (4.0, 30.0)
    assert place_rule(FineConf.make({"radius": 7.0}), cluster) == (7.0, 30.0)
    defaults = ClusterConf()
    other = BestConf.make({})  # another estimator: the cluster estimator's defaults
    assert place_rule(FineConf.make({}), other) == (defaults.radius, defaults.inlier_floor)


def _fine(*per_place: list[int]) -> list[FineMatch]:
    return [
        FineMatch(index=10 * p + k, place=p, tentative=n + 5, inliers=n, mean_score=0.5,
                  seconds=0.0)
        for p, views in enumerate(per_place)
        for k, n in enumerate(views)
    ]  # fmt: skip


def test_another_place_wins_only_with_a_clear_lead() -> None:
    conf = FineConf.make({"switch_inliers": 40, "switch_ratio": 1.5})
    clear = decide(3, _fine([10, 30], [151, 12], [20]), conf)
    assert clear.switched and clear.place == 1
    narrow = decide(3, _fine([100], [140], [20]), conf)  # 140 < 1.5 * 100
    assert not narrow.switched and narrow.place == 0
    weak = decide(3, _fine([5], [35], [0]), conf)  # below switch_inliers
    assert not weak.switched
    # Strong: the chosen place could answer a query the coarse stage declined.
    assert clear.strong and narrow.strong and not weak.strong
    assert clear.scores == (30.0, 151.0, 20.0)
    assert 0 < weak.score < clear.score < 1


def test_the_fine_place_takes_over_a_clear_win_or_a_declined_answer_it_can_support() -> None:
    conf = FineConf.make({"switch_inliers": 40, "switch_ratio": 1.5})
    switched = decide(2, _fine([10], [90]), conf)
    strong = decide(2, _fine([60], [20]), conf)  # place 0 keeps it, with a switch's evidence
    weak = decide(2, _fine([30], [20]), conf)
    assert switched.switched and not strong.switched and strong.strong and not weak.strong
    assert takes_over(switched, coarse_localised=True)
    assert not takes_over(strong, coarse_localised=True)  # the coarse answer stands
    assert takes_over(strong, coarse_localised=False)  # its guess under doubt gives way
    assert not takes_over(weak, coarse_localised=False)
    assert not takes_over(decide(2, [], conf), coarse_localised=False)


def test_no_fine_features_no_decision() -> None:
    d = decide(1, [], FineConf.make({}))
    assert d.place is None and not d.switched and d.score == 0.0


def test_a_place_estimate_leans_to_its_strongest_views() -> None:
    positions = np.array([[0.0, 0.0], [4.0, 0.0]] + [[99.0, 99.0]] * 9)
    fine = [
        FineMatch(index=0, place=1, tentative=90, inliers=90, mean_score=0.5, seconds=0.0),
        FineMatch(index=1, place=1, tentative=30, inliers=30, mean_score=0.5, seconds=0.0),
        FineMatch(index=5, place=0, tentative=50, inliers=50, mean_score=0.5, seconds=0.0),
    ]
    x, y, views = place_estimate(1, fine, positions)
    assert views == [0, 1]
    assert x == pytest.approx(4.0 * 30**2 / (90**2 + 30**2)) and y == 0.0


def test_fine_conf_refuses_unknown_keys_and_bad_values() -> None:
    with pytest.raises(InputError, match="plaices"):
        FineConf.make({"plaices": 2})
    with pytest.raises(InputError, match="escalate_below"):
        FineConf.make({"escalate_below": 1.5})
