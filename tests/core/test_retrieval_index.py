"""The compressed global-descriptor index: recall against exact search, adds, round trip."""

from __future__ import annotations

import warnings

import numpy as np

from core.arrays import as_float32
from core.retrieval.index import (
    CompressedIndex,
    IndexConfig,
    exact_scores,
    project,
)


def _clustered(rng: np.random.Generator, n: int, dim: int = 256, places: int = 300):
    """Unit vectors around ``places`` centres: views of one place resemble each other."""
    centres = rng.normal(size=(places, dim))
    x = centres[rng.integers(0, places, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def _trained(data: np.ndarray, conf: IndexConfig) -> CompressedIndex:
    pca = CompressedIndex.fit_pca(data[: conf.pca_sample], conf.dim)
    index = CompressedIndex.train(pca, project(data, *pca), len(data), conf)
    index.add(data)
    return index


def test_exact_top_ten_is_among_the_reranked_candidates():
    rng = np.random.default_rng(0)
    data = _clustered(rng, 3000)
    conf = IndexConfig(dim=64, m=8, nprobe=16, rerank=300, pca_sample=1000)
    index = _trained(data, conf)
    assert len(index) == len(data)
    # Queries: other views of mapped places (a mapped view plus as much noise again).
    near = data[rng.choice(len(data), 40)].astype(np.float32) + 0.05 * rng.normal(size=(40, 256))
    found = []
    for q in (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32):
        exact = np.argsort(-exact_scores([data], q))[:10]
        found.append(np.isin(exact, index.candidates(q)).mean())
    assert np.mean(found) >= 0.95, np.mean(found)
    assert index.nbytes < data.nbytes / 4  # compressed: codes, not vectors


def test_added_rows_continue_the_numbering_and_survive_a_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    data = _clustered(rng, 3000)
    conf = IndexConfig(dim=32, m=8, nprobe=64, rerank=50)
    index = _trained(data[:2000], conf)
    index.add(data[2000:])  # an extension: no retraining
    hits = [int(i) in index.candidates(data[i].astype(np.float32)) for i in range(2000, 3000, 50)]
    assert np.mean(hits) >= 0.9
    index.save(tmp_path / "index.arr")
    loaded = CompressedIndex.load(tmp_path / "index.arr")
    assert len(loaded) == 3000 and loaded.conf == index.conf
    q = data[2500].astype(np.float32)
    np.testing.assert_array_equal(loaded.candidates(q), index.candidates(q))


def test_exact_scores_match_one_float32_product():
    rng = np.random.default_rng(3)
    blocks = [_clustered(rng, 5000), _clustered(rng, 17)]
    q = _clustered(rng, 1)[0].astype(np.float32)
    full = np.concatenate(blocks).astype(np.float32) @ q
    np.testing.assert_array_equal(exact_scores(blocks, q, rows=1000), full)


def test_float16_rows_convert_exactly():
    """Every float16 value (subnormals, infinities and NaN included), from a strided view and
    from a read-only array (as a memory map gives)."""
    every = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    got = as_float32(every[:, ::2])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, every[:, ::2].astype(np.float32))
    every.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it is handed read-only memory
        np.testing.assert_array_equal(as_float32(every), every.astype(np.float32))
