"""Geometric verification of tentative matches with OpenCV's USAC (MAGSAC++ by default)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.types import Verification

_METHODS = {"magsac": cv2.USAC_MAGSAC, "accurate": cv2.USAC_ACCURATE, "ransac": cv2.RANSAC}


@dataclass(frozen=True)
class VerifyConfig:
    model: str = "fundamental"  # or "homography"
    method: str = "magsac"
    threshold_px: float = 1.0
    confidence: float = 0.999
    max_iters: int = 10_000

    def __post_init__(self) -> None:
        if self.model not in ("fundamental", "homography"):
            raise ValueError(f"unknown verification model {self.model!r}")
        if self.method not in _METHODS:
            raise ValueError(f"unknown verification method {self.method!r}")


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
