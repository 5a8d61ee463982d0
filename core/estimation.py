"""From verified candidates to one position, a confidence and a localised/not-localised call."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
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


def position_evidence(
    candidates: list[CandidateResult], inlier_floor: float
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Evidence pooled per reference position: the views of one place add up.

    A candidate's evidence is its inliers above ``inlier_floor`` (a wrong place still gets a
    few dozen inliers from learned features), so noise does not accumulate.
    Returns unique positions (P, 2), their evidence (P,) and the supporting reference ids.
    """
    by_pos: dict[tuple[float, float], tuple[float, list[str]]] = {}
    for c in candidates:
        e = max(c.inliers - inlier_floor, 0.0)
        if e <= 0:
            continue
        key = position_key(*c.position)
        total, ids = by_pos.get(key, (0.0, []))
        by_pos[key] = (total + e, [*ids, c.reference_id])
    if not by_pos:
        return np.zeros((0, 2)), np.zeros(0), []
    keys = list(by_pos)
    return (
        np.array(keys, np.float64),
        np.array([by_pos[k][0] for k in keys], np.float64),
        [by_pos[k][1] for k in keys],
    )


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
    radius, floor, min_evidence = c.radius, c.inlier_floor, c.min_evidence
    scale, power = c.confidence_scale, c.weight_power
    pos, ev, ids = position_evidence(candidates, floor)

    def declined(confidence: float, support: list[str]) -> Estimate:
        if c.doubt_power is None or not candidates:
            return Estimate(None, None, confidence, False, "cluster", support)
        x, y = doubt_position(candidates, c.doubt_power)
        return Estimate(x, y, confidence, False, "cluster:doubt", support)

    if len(pos) == 0:
        return declined(0.0, [])
    dist = np.abs(pos[:, None, :] - pos[None, :, :]).sum(-1)  # L1 between positions
    near = dist <= radius
    place = near @ ev  # evidence of the place around each position
    # Ties: the place whose own position is strongest.
    seed = int(np.lexsort((-ev, -place))[0])
    members = np.flatnonzero(near[seed])
    w = ev[members] ** power
    x, y = (w[:, None] * pos[members]).sum(0) / w.sum()
    best = float(place[seed])
    far = dist[seed] > 2 * radius
    second = float(place[far].max()) if far.any() else 0.0
    share = best / (best + second)
    confidence = inlier_confidence(best, scale) * share
    support = [rid for m in members for rid in ids[m]]
    if best < min_evidence:
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
