"""Geometric verification (core/verify.py) on points projected from a known scene."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from core.errors import InputError
from core.verify import VerifyConfig, verify, verify_many


def _two_views(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``n`` random 3D points seen by two cameras 1 unit apart, 20 degrees turned."""
    points = rng.uniform([-4, -3, 6], [4, 3, 12], size=(n, 3))
    k = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    a = np.radians(20)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    first = (k @ points.T).T
    second = (k @ (rot @ points.T + np.array([[1.0], [0.0], [0.0]]))).T
    return first[:, :2] / first[:, 2:], second[:, :2] / second[:, 2:]


def test_true_matches_are_inliers_and_random_ones_are_not():
    rng = np.random.default_rng(0)
    q, r = _two_views(200, rng)
    outliers = rng.uniform(0, [640, 480], size=(60, 2))
    ver = verify(np.vstack([q, outliers]), np.vstack([r, outliers[::-1]]), VerifyConfig())
    assert ver.model is not None and ver.model.shape == (3, 3)
    assert ver.inliers[:200].mean() > 0.95
    assert ver.inliers[200:].mean() < 0.2


def test_too_few_or_degenerate_points_give_no_model():
    q, r = _two_views(7, np.random.default_rng(1))
    few = verify(q, r, VerifyConfig())
    assert few.model is None and few.num_inliers == 0 and len(few.inliers) == 7
    # Collinear points fix no fundamental matrix: no model and no inliers, not an exception.
    line = np.column_stack([np.arange(20.0), np.zeros(20)])
    flat = verify(line, line + 5, VerifyConfig())
    assert flat.model is None and flat.num_inliers == 0 and flat.inliers.shape == (20,)


@pytest.mark.parametrize("fields", [{"model": "affine"}, {"method": "lmeds"}])
def test_unknown_models_and_methods_are_refused(fields):
    ((key, value),) = fields.items()
    with pytest.raises(InputError, match=f"{key}: Input should be"):
        VerifyConfig.make(fields)
    with pytest.raises(ValidationError, match=value):
        VerifyConfig(**fields)


@pytest.mark.parametrize("method", ["magsac", "accurate", "ransac"])
def test_pairs_verified_on_threads_equal_one_by_one(method: str):
    """Each pair's inliers do not depend on the thread that ran it, nor on the pairs before it
    (a sampler shared between calls would make them depend on both)."""
    rng = np.random.default_rng(2)
    pairs = []
    for n in (40, 120, 7, 300, 80, 60):
        q, r = _two_views(n, rng)
        noise = rng.uniform(0, [640, 480], size=(n // 3, 2))
        pairs.append((np.vstack([q, noise]), np.vstack([r, noise[::-1]])))
    conf = VerifyConfig(method=method)
    alone = [verify(q, r, conf).inliers for q, r in pairs]
    for threads in (1, 3):
        got = verify_many(pairs, conf, threads)
        assert len(got) == len(pairs) and all(s >= 0 for _, s in got)
        for (v, _), want in zip(got, alone, strict=True):
            assert np.array_equal(v.inliers, want)
    assert sum(m.sum() for m in alone) > 300  # real models were found
