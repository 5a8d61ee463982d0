"""The batched mutual-nearest-neighbour matcher against a plain one-pair-at-a-time reference."""

from __future__ import annotations

import numpy as np
import pytest

from core.matching.mnn import MutualNearestNeighbour
from core.types import Features


def _features(rng: np.random.Generator, n: int, dim: int = 16) -> Features:
    d = rng.normal(size=(n, dim)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    kp = rng.uniform(0, 100, size=(n, 2)).astype(np.float32)
    return Features(kp, d.astype(np.float16), np.ones(n, np.float32), (100, 100))


def _reference(q: Features, r: Features, ratio: float, min_sim: float) -> set[tuple[int, int]]:
    """Mutual NN written out plainly: each query's two best references, each reference's best."""
    if len(r) < 2:
        return set()
    sim = q.descriptors.astype(np.float32) @ r.descriptors.astype(np.float32).T
    out = set()
    for i in range(len(q)):
        order = np.argsort(-sim[i])
        j, second = order[0], sim[i, order[1]]
        if int(np.argmax(sim[:, j])) != i or sim[i, j] <= min_sim:
            continue
        d1 = np.sqrt(max(2 - 2 * sim[i, j], 0))
        d2 = np.sqrt(max(2 - 2 * second, 0))
        if d1 < ratio * d2:
            out.add((i, int(j)))
    return out


@pytest.mark.parametrize(("ratio", "min_sim"), [(1.0, 0.0), (0.9, 0.0), (0.95, 0.3)])
def test_batched_matches_equal_the_plain_definition(
    ratio: float, min_sim: float, device: str
) -> None:
    """On every device (the CPU, and CUDA where present: the whole shortlist in one block)."""
    rng = np.random.default_rng(7)
    query = _features(rng, 60)
    # Uneven sizes (padding inside a batch), a reference too small to match, and one that
    # shares noisy copies of query descriptors so that real matches exist.
    shared = query.descriptors[:30].astype(np.float32) + rng.normal(0, 0.05, (30, 16))
    shared /= np.linalg.norm(shared, axis=1, keepdims=True)
    near = Features(
        rng.uniform(0, 100, (30, 2)).astype(np.float32),
        shared.astype(np.float16),
        np.ones(30, np.float32),
        (100, 100),
    )
    refs = [_features(rng, n) for n in (50, 1, 73, 20, 64, 5, 90)] + [near]
    matcher = MutualNearestNeighbour({"ratio": ratio, "min_similarity": min_sim}, device)
    got = matcher.match_many(query, refs)
    for ref, m in zip(refs, got, strict=True):
        assert {tuple(p) for p in m.indices.tolist()} == _reference(query, ref, ratio, min_sim)
        assert len(m.scores) == len(m.indices) and np.all((m.scores >= 0) & (m.scores <= 1))
    assert len(got[-1]) >= 25  # the noisy copies are found
    assert matcher.match(query, refs[0]).indices.tolist() == got[0].indices.tolist()


def test_an_empty_query_matches_nothing() -> None:
    rng = np.random.default_rng(0)
    empty = Features(
        np.zeros((0, 2), np.float32), np.zeros((0, 16), np.float16), np.zeros(0, np.float32), (1, 1)
    )
    out = MutualNearestNeighbour().match_many(empty, [_features(rng, 10)])
    assert len(out) == 1 and len(out[0]) == 0
