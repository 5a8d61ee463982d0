"""Headings: angles in radians in the map frame (from its +x axis towards its +y axis)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def wrap(angle: float) -> float:
    """``angle`` in [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def circular_median(angles: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """The angle among ``angles`` with the least weighted sum of angular distances to all."""
    a = np.asarray(angles, np.float64)
    w = np.ones(len(a)) if weights is None else np.asarray(weights, np.float64)
    dist = np.abs(np.angle(np.exp(1j * (a[:, None] - a[None, :]))))
    return float(a[int(np.argmin(dist @ w))])


def angular_distance(a: float, b: float) -> float:
    """The smaller angle between two headings, in [0, pi]."""
    return abs(wrap(a - b))


def heading_text(radians: float | None) -> str:
    """A heading as people read one: whole degrees in [0, 360) from the map's x axis towards
    its y axis, or "-" where there is none (the CLI and the job page show it so)."""
    return "-" if radians is None else f"{math.degrees(radians) % 360:.0f}°"
