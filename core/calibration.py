"""Confidence as a probability: isotonic curves from raw scores to P(hit), fitted on held-out
queries (core/heldout.py), stored as breakpoints in the map's training record."""

from __future__ import annotations

import numpy as np

# A calibrated answer is "localised" when its probability of being a hit is at least this.
LOCALISED_PROBABILITY = 0.5


def isotonic(scores: np.ndarray, hits: np.ndarray) -> dict[str, list[float]]:
    """A non-decreasing map from raw score to P(hit), as breakpoints for ``np.interp``."""
    from sklearn.isotonic import IsotonicRegression

    if len(scores) == 0:
        return {"x": [0.0, 1.0], "y": [0.0, 0.0]}
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(np.asarray(scores, np.float64), np.asarray(hits, np.float64))
    return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


def calibrate(curve: dict[str, list[float]], score: float) -> float:
    """The probability a fitted curve gives a raw score (flat beyond its ends)."""
    return float(np.interp(score, curve["x"], curve["y"]))


def expected_calibration_error(
    confidence: np.ndarray, hits: np.ndarray, bins: int = 10
) -> tuple[float, list[tuple[float, float, int]]]:
    """ECE over equal-width confidence bins, and the reliability diagram's points
    (mean confidence, hit rate, count) of the non-empty bins."""
    confidence = np.asarray(confidence, np.float64)
    hits = np.asarray(hits, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece, points = 0.0, []
    for b in range(bins):
        sel = which == b
        if not sel.any():
            continue
        conf, rate = float(confidence[sel].mean()), float(hits[sel].mean())
        ece += sel.mean() * abs(conf - rate)
        points.append((conf, rate, int(sel.sum())))
    return float(ece), points
