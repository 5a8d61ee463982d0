"""From verified candidates to one position, a confidence and a localised/not-localised call."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from core.config import Conf
from core.positions import position_key
from core.types import CandidateResult, Estimate

# An estimator's conf: its typed Conf, or a dict merged over that Conf's defaults.
ConfLike = Conf | Mapping[str, Any] | None


@dataclass(frozen=True)
class Estimator:
    """An estimator by name: its function and the Conf that declares its options."""

    run: Callable[[list[CandidateResult], Any], Estimate]
    Conf: type[Conf]

    def __call__(self, candidates: list[CandidateResult], conf: ConfLike = None) -> Estimate:
        return self.run(candidates, conf)


def inlier_confidence(inliers: float, scale: float) -> float:
    """Map an inlier count to (0, 1): half confidence at ``scale`` inliers."""
    return 1.0 - math.exp(-math.log(2) * max(inliers, 0.0) / scale)


class BestConf(Conf):
    min_inliers: int = Field(15, ge=0)  # fewer: not localised
    confidence_scale: float = Field(50.0, gt=0)  # inliers at half confidence


def best_candidate(candidates: list[CandidateResult], conf: ConfLike = None) -> Estimate:
    """The original method's rule, on verified inliers: copy the best candidate's position."""
    c = BestConf.make(conf, "estimator 'best'")
    min_inliers, scale = c.min_inliers, c.confidence_scale
    if not candidates:
        return Estimate(None, None, 0.0, False, "best", [])
    best = max(candidates, key=lambda c: (c.inliers, c.tentative_matches))
    if best.inliers < min_inliers:
        return Estimate(None, None, inlier_confidence(best.inliers, scale), False, "best", [])
    return Estimate(
        best.position[0],
        best.position[1],
        inlier_confidence(best.inliers, scale),
        True,
        "best",
        [best.reference_id],
    )


ESTIMATORS: dict[str, Estimator] = {"best": Estimator(best_candidate, BestConf)}


@dataclass(frozen=True)
class PooledPlaces:
    """The coarse candidates pooled per reference position and per place.

    Where the coarse answer is: the cluster estimator answers at the place of ``order[0]`` and
    the fine stage (core/finestage.py) re-verifies the places of ``order`` in turn, so its
    place 0 is the estimator's place whenever both use the same radius and floor.
    """

    positions: np.ndarray  # (P, 2) the candidates' distinct positions (core/positions.py)
    views: list[list[CandidateResult]]  # the candidates at each position
    evidence: np.ndarray  # (P,) inliers above the floor, pooled over a position's views
    near: np.ndarray  # (P, P) bool: within the radius (L1) of each other
    place: np.ndarray  # (P,) evidence of the place around each position
    # Positions as seeds of places: those with evidence first, by their place's evidence, then
    # their own, then their first candidate's retrieval rank; positions without evidence (whose
    # place may still hold the right answer) after, by their place's evidence, then their best
    # view's inliers, then retrieval rank.
    order: np.ndarray


def pool_places(
    candidates: Sequence[CandidateResult], radius: float, inlier_floor: float
) -> PooledPlaces:
    """The evidence of every position and of the place within ``radius`` (L1, the score's
    metric) of it; a candidate's evidence is its inliers above ``inlier_floor``."""
    by_key: dict[tuple[float, float], list[CandidateResult]] = {}
    # Positions in order of their first candidate with evidence, then the others (candidates
    # come in retrieval rank order): the last tie-break, and the order of the support.
    for c in sorted(candidates, key=lambda c: c.inliers <= inlier_floor):
        by_key.setdefault(position_key(*c.position), []).append(c)
    views = list(by_key.values())
    xy = np.array(list(by_key), np.float64).reshape(-1, 2)
    evidence = np.array(
        [sum(max(c.inliers - inlier_floor, 0.0) for c in v) for v in views], np.float64
    )
    best = np.array([max(c.inliers for c in v) for v in views], np.float64)
    near = np.abs(xy[:, None, :] - xy[None, :, :]).sum(-1) <= radius
    place = near @ evidence
    weak = evidence <= 0
    order = np.lexsort((np.where(weak, -best, 0.0), -evidence, -place, weak))
    return PooledPlaces(xy, views, evidence, near, place, order)


class ClusterConf(Conf):
    """The default estimator's options; the defaults are the measured ones (bench/accuracy.py
    on the Getty set, see BENCHMARKS.md) and the default preset uses them (core/defaults.py)."""

    radius: float = Field(9.0, ge=0)  # L1 map units: positions this close are one place
    inlier_floor: float = Field(20.0, ge=0)  # inliers a wrong place still gets
    weight_power: float = Field(2.0, ge=0)  # evidence ** power weighs the mean position
    min_evidence: float = Field(10.0, ge=0)  # less: not localised
    confidence_scale: float = Field(60.0, gt=0)  # evidence at half confidence
    # A declined answer still carries a best guess (``doubt_position``) with candidates
    # weighed by (inliers + 1) ** doubt_power; None: no guess (x, y stay None). 4 was best on
    # the Getty map's held-out positions (bench/fine_rule.py, BENCHMARKS.md section 9).
    doubt_power: float | None = Field(4.0, ge=0)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value at half the total weight: it minimises the weighted sum of |value - v|."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def doubt_position(candidates: list[CandidateResult], power: float) -> tuple[float, float]:
    """The best guess when no place has enough evidence: the coordinate-wise median of the
    shortlist's positions weighted by (inliers + 1) ** ``power``.

    It minimises the expected |dx| + |dy| (the score's metric) if the weights were the
    probabilities of the positions. A single view's few stray inliers then no longer send the
    answer across the site: where weak views disagree, the guess lies between them.
    """
    pos = np.array([c.position for c in candidates], np.float64)
    w = (np.array([c.inliers for c in candidates], np.float64) + 1.0) ** power
    return weighted_median(pos[:, 0], w), weighted_median(pos[:, 1], w)


def cluster_candidates(candidates: list[CandidateResult], conf: ConfLike = None) -> Estimate:
    """Group reference positions within ``radius``, keep the place with the most evidence and
    place the query at the evidence-weighted mean of that group.

    Evidence of a place = the inliers above ``inlier_floor`` of every view at every position
    within ``radius`` (L1, the score's metric) of its strongest position. The confidence grows
    with that evidence (half at ``confidence_scale``) and with its share against the best place
    farther than ``2 * radius`` away (``margin``): two strong, distant places mean ambiguity.
    Not localised when the winning place has less than ``min_evidence``; such an answer still
    carries the guess of :func:`doubt_position` (unless ``doubt_power`` is None).
    """
    c = ClusterConf.make(conf, "estimator 'cluster'")
    pooled = pool_places(candidates, c.radius, c.inlier_floor)
    ev = pooled.evidence
    has = ev > 0

    def declined(confidence: float, support: list[str]) -> Estimate:
        if c.doubt_power is None or not candidates:
            return Estimate(None, None, confidence, False, "cluster", support)
        x, y = doubt_position(candidates, c.doubt_power)
        return Estimate(x, y, confidence, False, "cluster:doubt", support)

    if not has.any():
        return declined(0.0, [])
    seed = int(pooled.order[0])  # a position with evidence: they come first
    members = np.flatnonzero(pooled.near[seed] & has)
    w = ev[members] ** c.weight_power
    x, y = (w[:, None] * pooled.positions[members]).sum(0) / w.sum()
    best = float(pooled.place[seed])
    far = has & (np.abs(pooled.positions - pooled.positions[seed]).sum(1) > 2 * c.radius)
    second = float(pooled.place[far].max()) if far.any() else 0.0
    share = best / (best + second)
    confidence = inlier_confidence(best, c.confidence_scale) * share
    support = [
        v.reference_id for m in members for v in pooled.views[m] if v.inliers > c.inlier_floor
    ]
    if best < c.min_evidence:
        return declined(confidence, support)
    return Estimate(float(x), float(y), confidence, True, "cluster", support)


ESTIMATORS["cluster"] = Estimator(cluster_candidates, ClusterConf)


class MostMatchesConf(Conf):
    confidence_scale: float = Field(50.0, gt=0)  # raw matches at half confidence


def most_matches(candidates: list[CandidateResult], conf: ConfLike = None) -> Estimate:
    """The original method as published: the reference with the most raw (unverified) matches."""
    scale = MostMatchesConf.make(conf, "estimator 'most_matches'").confidence_scale
    if not candidates:
        return Estimate(None, None, 0.0, False, "most_matches", [])
    best = max(candidates, key=lambda c: (c.tentative_matches, c.inliers))
    return Estimate(
        best.position[0],
        best.position[1],
        inlier_confidence(best.tentative_matches, scale),
        True,
        "most_matches",
        [best.reference_id],
    )


ESTIMATORS["most_matches"] = Estimator(most_matches, MostMatchesConf)
