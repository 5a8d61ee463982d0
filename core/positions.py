"""When two references stand at the same position: the one rule every stage uses.

Views of one position share its (x, y) exactly as the map's CSV gave them; rounding to 6
decimals makes the comparison immune to float noise picked up on the way (parsing, float32
copies) without merging positions a survey would tell apart.
"""

from __future__ import annotations

import numpy as np

DECIMALS = 6


def position_key(x: float, y: float) -> tuple[float, float]:
    """A hashable key: equal for every view of one position."""
    return round(float(x), DECIMALS), round(float(y), DECIMALS)


def position_groups(positions: np.ndarray) -> np.ndarray:
    """(N,) group id per row of ``positions`` (N, 2): rows at the same position share one,
    numbered in sorted order of position."""
    if len(positions) == 0:
        return np.zeros(0, np.int64)
    _, groups = np.unique(np.round(positions, DECIMALS), axis=0, return_inverse=True)
    return groups.ravel().astype(np.int64)


def at_position(positions: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of ``positions`` at the position ``xy``."""
    return (np.round(positions, DECIMALS) == np.round(np.asarray(xy), DECIMALS)).all(axis=1)


def spacing(positions: np.ndarray) -> float:
    """The site's position spacing: the median distance from a position to the nearest other
    one (views of one position count once); 1.0 for fewer than two positions. The unit of the
    distances the map report and the held-out re-measuring use, whatever the map's units."""
    from scipy.spatial import cKDTree

    distinct = np.unique(np.round(np.asarray(positions, np.float64), DECIMALS), axis=0)
    if len(distinct) < 2:
        return 1.0
    dist, _ = cKDTree(distinct).query(distinct, k=2)
    return float(np.median(dist[:, 1])) or 1.0
