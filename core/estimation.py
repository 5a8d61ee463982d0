"""From verified candidates to one position, a confidence and a localised/not-localised call."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from core.types import CandidateResult, Estimate

Estimator = Callable[[list[CandidateResult], dict[str, Any]], Estimate]


def inlier_confidence(inliers: float, scale: float) -> float:
    """Map an inlier count to (0, 1): half confidence at ``scale`` inliers."""
    return 1.0 - math.exp(-math.log(2) * max(inliers, 0.0) / scale)


def best_candidate(candidates: list[CandidateResult], conf: dict[str, Any]) -> Estimate:
    """The original method's rule, on verified inliers: copy the best candidate's position."""
    min_inliers = int(conf.get("min_inliers", 15))
    scale = float(conf.get("confidence_scale", 50.0))
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


ESTIMATORS: dict[str, Estimator] = {"best": best_candidate}
