"""Geometric verification of tentative matches with OpenCV's USAC (MAGSAC++ by default)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from core.config import Conf
from core.types import Verification

_METHODS = {"magsac": cv2.USAC_MAGSAC, "accurate": cv2.USAC_ACCURATE, "ransac": cv2.RANSAC}


class VerifyConfig(Conf):
    """Two-view model and robust estimator; the defaults are the measured default preset's
    (core/defaults.py)."""

    model: Literal["fundamental", "homography"] = "fundamental"
    method: Literal["magsac", "accurate", "ransac"] = "magsac"
    threshold_px: float = Field(2.0, gt=0, le=50)
    confidence: float = Field(0.999, gt=0, lt=1)
    max_iters: int = Field(10_000, ge=1)


def verify(query_pts: np.ndarray, ref_pts: np.ndarray, conf: VerifyConfig) -> Verification:
    """Fit a two-view model to matched points (M, 2) and return the inlier mask."""
    n = len(query_pts)
    min_pts = 8 if conf.model == "fundamental" else 4
    if n < min_pts:
        return Verification(np.zeros(n, bool), None)
    q = np.ascontiguousarray(query_pts, np.float64)
    r = np.ascontiguousarray(ref_pts, np.float64)
    method = _METHODS[conf.method]
    try:
        if conf.model == "fundamental":
            model, mask = cv2.findFundamentalMat(
                q, r, method, conf.threshold_px, conf.confidence, conf.max_iters
            )
        else:
            model, mask = cv2.findHomography(
                q, r, method, conf.threshold_px, maxIters=conf.max_iters, confidence=conf.confidence
            )
    except cv2.error:
        # Degenerate configurations (all points on a line, duplicates) make USAC throw.
        return Verification(np.zeros(n, bool), None)
    if model is None or mask is None:
        return Verification(np.zeros(n, bool), None)
    # findFundamentalMat may stack several 3x3 solutions; keep the first (the best).
    return Verification(mask.ravel().astype(bool), np.asarray(model)[:3])


def verify_many(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], conf: VerifyConfig, threads: int = 1
) -> list[tuple[Verification, float]]:
    """:func:`verify` of each (query points, reference points) pair and the seconds it took,
    in order, on ``threads`` threads: OpenCV releases the GIL while it estimates, so pairs
    run in parallel on a host's idle cores. USAC seeds its sampler per call, so the result
    does not depend on which thread ran a pair."""

    def timed(pair: tuple[np.ndarray, np.ndarray]) -> tuple[Verification, float]:
        t0 = time.perf_counter()
        out = verify(pair[0], pair[1], conf)
        return out, time.perf_counter() - t0

    if threads <= 1 or len(pairs) < 2:
        return [timed(p) for p in pairs]
    with ThreadPoolExecutor(min(threads, len(pairs))) as pool:
        return list(pool.map(timed, pairs))
