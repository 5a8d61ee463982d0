"""Coarse-to-fine: re-verify the strongest places of the coarse stage with a stronger matcher.

The coarse stage (XFeat + mutual NN on a VLAD shortlist, MAGSAC) is fast, but on blank walls,
glass and reflections its inlier counts do not separate the right place from wrong ones. ALIKED +
LightGlue separates more of those pairs, at many times the cost on a CPU, so it runs only on
the few places the coarse evidence ranks highest, on the views of each place that the coarse
stage found best, and only for queries whose coarse answer is in doubt (the escalation rule is
fitted on the map's own held-out positions: ``core/heldout.py``).

A place is a group of reference positions within ``radius`` (L1) of its strongest position,
seeded and ranked as the cluster estimator does it (``core.estimation.pool_places``). The fine
features of the references are the map's "fine" feature set
(``ReferenceMap.feature_set("fine")``), built with the map or added later
(``core.mapbuild.add_fine_features``); views without them are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from core.config import Conf
from core.estimation import ClusterConf, inlier_confidence, pool_places
from core.matching.base import Matcher
from core.types import CandidateResult, Features
from core.verify import VerifyConfig, verify


@dataclass(frozen=True)
class Place:
    """A candidate place of the coarse stage and the views chosen to re-verify it."""

    seed: tuple[float, float]  # its strongest reference position
    evidence: float  # pooled coarse inliers above the floor within the radius
    views: tuple[int, ...]  # map rows of the references to match with the fine features


def top_places(
    candidates: Sequence[CandidateResult],
    index: Callable[[str], int],
    radius: float,
    inlier_floor: float,
    places: int,
    views: int,
) -> list[Place]:
    """The ``places`` strongest places of the coarse candidates, ``views`` references each.

    Places are seeded and ranked as the cluster estimator ranks them
    (``core.estimation.pool_places``), so place 0 is where its answer is; a place's views are
    its references with the most coarse inliers (ties by retrieval score). Candidates with no
    evidence above the floor still form places, after the others, so a query whose coarse
    evidence is all weak is re-verified too.
    """
    if not candidates or places < 1 or views < 1:
        return []
    pooled = pool_places(candidates, radius, inlier_floor)
    used = np.zeros(len(pooled.positions), bool)
    chosen: list[Place] = []
    for s in pooled.order:
        if used[s]:
            continue
        members = np.flatnonzero(pooled.near[s] & ~used)
        used[members] = True
        pool = [c for m in members for c in pooled.views[m]]
        pool.sort(key=lambda c: (-c.inliers, -c.retrieval_score))
        chosen.append(
            Place(
                (float(pooled.positions[s, 0]), float(pooled.positions[s, 1])),
                float(pooled.place[s]),
                tuple(index(c.reference_id) for c in pool[:views]),
            )
        )
        if len(chosen) == places:
            break
    return chosen


@dataclass(frozen=True)
class FineMatch:
    """The fine stage's evidence for one reference view."""

    index: int  # the reference's row in the map
    place: int  # which of the places (0 = the coarse stage's strongest)
    tentative: int
    inliers: int
    mean_score: float
    seconds: float
    # (K, 2) query and reference fine keypoint rows of the inliers (for the job's figure).
    inlier_indices: np.ndarray | None = None


def match_places(
    query: Features,
    places: Sequence[Place],
    fine_features: Callable[[int], Features | None],
    matcher: Matcher,
    verify_conf: VerifyConfig,
) -> list[FineMatch]:
    """Match the query's fine features with each chosen view that has fine features."""
    jobs = [
        (p, i, f)
        for p, place in enumerate(places)
        for i in place.views
        if (f := fine_features(i)) is not None
    ]
    t0 = time.perf_counter()
    matches = matcher.match_many(query, [f for _, _, f in jobs])
    per_pair = (time.perf_counter() - t0) / max(len(jobs), 1)
    out = []
    for (p, i, ref), m in zip(jobs, matches, strict=True):
        ver = verify(query.keypoints[m.indices[:, 0]], ref.keypoints[m.indices[:, 1]], verify_conf)
        inl = ver.inliers
        out.append(
            FineMatch(
                index=i,
                place=p,
                tentative=len(m),
                inliers=ver.num_inliers,
                mean_score=float(m.scores[inl].mean()) if inl.any() else 0.0,
                seconds=per_pair,
                inlier_indices=m.indices[inl],
            )
        )
    return out


def place_scores(fine: Sequence[FineMatch], places: int) -> np.ndarray:
    """Each place's fine evidence: the most inliers any of its views got (0 without views)."""
    best = np.zeros(places, np.float64)
    for m in fine:
        best[m.place] = max(best[m.place], m.inliers)
    return best


class FineConf(Conf):
    """The fine stage's options (a job's ``fine_conf``); the map's training record
    (core/heldout.py) supplies ``escalate_below`` when the job does not."""

    # Chosen on the Getty map's held-out positions with bench/fine_rule.py (its figures:
    # BENCHMARKS.md section 8): 3 places x 1 view made the held-out error worse, 5 x 3 with a
    # switch at 40 fine inliers and any lead lowered it. Re-run the replay to revisit them.
    places: int = Field(5, ge=1, le=20)  # coarse places re-verified
    views: int = Field(3, ge=1, le=10)  # views of each place matched
    # L1 extent of a place and the coarse inliers that count as evidence; None: the cluster
    # estimator's (the job's estimator_conf), so that place 0 is where the coarse answer is.
    radius: float | None = Field(None, gt=0)
    inlier_floor: float | None = Field(None, ge=0)
    # Escalate when the coarse confidence is below this (1.0: always, 0.0: never); None: the
    # map's fitted value, else DEFAULT_ESCALATE_BELOW.
    escalate_below: float | None = Field(None, ge=0, le=1)
    switch_inliers: float = Field(40.0, ge=0)  # fine inliers another place needs to win
    switch_ratio: float = Field(1.0, ge=1)  # ... and its lead over the coarse winner's place
    confidence_scale: float = Field(60.0, gt=0)  # fine inliers at which the raw score is 1/2
    verify_threshold_px: float = Field(2.0, gt=0, le=50)


DEFAULT_ESCALATE_BELOW = 0.5


def place_rule(conf: FineConf, estimator_conf: Conf) -> tuple[float, float]:
    """The radius and inlier floor of the fine stage's places: the job's ``fine_conf`` where it
    sets them, else those of the cluster estimator's conf (its defaults under another
    estimator)."""
    cluster = estimator_conf if isinstance(estimator_conf, ClusterConf) else ClusterConf()
    radius = conf.radius if conf.radius is not None else cluster.radius
    floor = conf.inlier_floor if conf.inlier_floor is not None else cluster.inlier_floor
    return radius, floor


@dataclass(frozen=True)
class FineDecision:
    """What the fine stage concluded."""

    place: int | None  # the winning place, None when no view had fine features
    switched: bool  # the answer moved away from the coarse winner's place
    score: float  # raw confidence in [0, 1], before calibration
    scores: tuple[float, ...]  # fine evidence per place
    # The chosen place has the fine inliers a switch needs: enough to answer a query that the
    # coarse stage declined (with fewer, its guess under doubt stands: Localiser._refine).
    strong: bool


def decide(places: int, fine: Sequence[FineMatch], conf: FineConf) -> FineDecision:
    """Which of the ``places`` re-verified places the fine evidence supports. The coarse
    winner's place (place 0) keeps the answer unless another place beats it clearly: fine
    matchers also find a few dozen inliers on wrong places, so a narrow lead is noise."""
    if not fine:
        return FineDecision(None, False, 0.0, (), False)
    best = place_scores(fine, places)
    w = int(np.argmax(best))
    switched = w != 0 and best[w] >= conf.switch_inliers and best[w] >= conf.switch_ratio * best[0]
    chosen = w if switched else 0
    others = np.delete(best, chosen)
    second = float(others.max()) if len(others) else 0.0
    share = best[chosen] / (best[chosen] + second) if best[chosen] > 0 else 0.0
    score = inlier_confidence(float(best[chosen]), conf.confidence_scale) * share
    strong = bool(best[chosen] >= conf.switch_inliers)
    return FineDecision(chosen, switched, float(score), tuple(float(b) for b in best), strong)


def takes_over(decision: FineDecision, coarse_localised: bool) -> bool:
    """Whether the fine place's position replaces the coarse answer: another place won clearly,
    or the coarse stage declined and the fine place has the evidence a switch needs (with less,
    the coarse guess under doubt of ``core.estimation.doubt_position`` stands)."""
    if decision.place is None:
        return False
    return decision.switched or (not coarse_localised and decision.strong)


def place_estimate(
    place: int, fine: Sequence[FineMatch], positions: np.ndarray
) -> tuple[float, float, list[int]]:
    """(x, y) of a place from its fine-verified views: positions weighted by inliers squared
    (as the cluster estimator weighs its members), and the views that support it."""
    views = [m for m in fine if m.place == place and m.inliers > 0]
    if not views:
        views = [m for m in fine if m.place == place]
    w = np.array([max(m.inliers, 1) ** 2 for m in views], np.float64)
    xy = positions[[m.index for m in views]]
    x, y = (w[:, None] * xy).sum(0) / w.sum()
    return float(x), float(y), [m.index for m in views]
