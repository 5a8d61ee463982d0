"""A compressed index of global descriptors for big maps: PCA, faiss IVF-PQ, exact re-ranking.

Small maps are ranked exactly (one product over every reference's descriptor). From
``INDEX_MIN_REFERENCES`` references on, a retriever keeps instead:

1. a PCA (``dim`` outputs, fitted on a sample of the map's own descriptors with faiss's
   ``PCAMatrix``, which uses the Gram matrix when the sample is smaller than the input
   dimension), no whitening: inner products of projections approximate the originals;
2. a faiss ``IndexIVFPQ`` (inner product) over the projections: ``nlist`` coarse cells of which
   ``nprobe`` are visited, ``m`` bytes of product-quantisation code per reference;
3. exact re-ranking: the ``rerank`` best candidates of the index are scored with the full
   descriptors (read from their memory map), and the best ``top_k`` of those are returned.

Only the index lives in a worker's memory (``m`` + 8 bytes per reference plus the PCA matrix);
the full descriptors stay on disk, shared through the page cache. Adding references projects and
adds them (``add``) without retraining; retrain when the map has grown well past the sample the
index was trained on (the VLAD retriever does at ``refit_growth``).

Switch-over: exact ranking costs one pass over N full descriptors per query (linear in N), the
index a near-constant few milliseconds plus the re-ranking reads; ``INDEX_MIN_REFERENCES`` is
where the exact pass became the slower (bench/scale.py measures both; BENCHMARKS.md has the
figures of each run).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from core.arrays import as_float32
from core.flatfile import read_arrays, read_rows, write_arrays

INDEX_MIN_REFERENCES = 20_000


@dataclass(frozen=True)
class IndexConfig:
    # Chosen with bench/scale.py on Getty + distractors up to 1,000,000 references (figures:
    # BENCHMARKS.md, "Scale (issue 14)"): 512 PCA outputs rank the true references far better
    # than 256, and 128 PQ bytes keep most of that where 64 lose it.
    dim: int = 512  # PCA outputs
    m: int = 128  # PQ bytes per reference
    nprobe: int = 64
    rerank: int = 2000  # candidates scored exactly (read from the memory-mapped descriptors)
    pca_sample: int = 2500  # descriptors the PCA is fitted on
    train_sample: int = 60_000  # projections the IVF-PQ is trained on

    def nlist(self, references: int) -> int:
        """Coarse cells: about 4 sqrt(N), as faiss's guidelines suggest for IVF."""
        return int(min(max(4 * math.sqrt(max(references, 1)), 16), 65536))


class CompressedIndex:
    """PCA projection + IVF-PQ over the projections; rows are numbered in the order added."""

    def __init__(self, pca_a: np.ndarray, pca_b: np.ndarray, index, conf: IndexConfig) -> None:
        self.pca_a = pca_a  # (dim, D) float32
        self.pca_b = pca_b  # (dim,) float32
        self.index = index
        self.conf = conf
        self.index.nprobe = conf.nprobe

    @staticmethod
    def fit_pca(sample: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) of the PCA projection ``x @ A.T + b`` fitted on ``sample`` (full rows)."""
        import faiss

        sample = np.ascontiguousarray(sample, np.float32)
        dim = min(dim, len(sample), sample.shape[1])  # tiny maps: fewer outputs than asked
        pca = faiss.PCAMatrix(sample.shape[1], dim)
        pca.train(sample)
        a = faiss.vector_to_array(pca.A).reshape(dim, sample.shape[1]).astype(np.float32)
        return a, faiss.vector_to_array(pca.b).astype(np.float32)

    @classmethod
    def train(
        cls,
        pca: tuple[np.ndarray, np.ndarray],
        projections: np.ndarray,
        expected_references: int,
        conf: IndexConfig | None = None,
        seed: int = 0,
    ) -> CompressedIndex:
        """The coarse and PQ codebooks, trained on ``projections`` (rows already projected)."""
        import faiss

        conf = conf or IndexConfig()
        dim = len(pca[1])
        # Small samples (tests, tiny maps): fewer bytes and code bits than asked.
        m = max(d for d in range(1, min(conf.m, dim) + 1) if dim % d == 0)
        bits = int(min(8, max(1, math.log2(max(len(projections), 2)))))
        conf = replace(conf, dim=dim, m=m)
        quantiser = faiss.IndexFlatIP(dim)
        nlist = min(conf.nlist(expected_references), max(len(projections) // 39, 1))
        ivf = faiss.IndexIVFPQ(quantiser, dim, nlist, m, bits, faiss.METRIC_INNER_PRODUCT)
        ivf.own_fields = True
        quantiser.this.disown()  # type: ignore[attr-defined]  # SWIG: ivf owns it now
        ivf.cp.seed = seed
        ivf.train(np.ascontiguousarray(projections, np.float32))
        return cls(pca[0], pca[1], ivf, conf)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        return _project(vectors, self.pca_a, self.pca_b)

    def add(self, vectors: np.ndarray) -> None:
        """Append full descriptors (rows continue the numbering)."""
        self.add_projected(self.project(vectors))

    def add_projected(self, projections: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(projections, np.float32))

    def candidates(self, query: np.ndarray, count: int | None = None) -> np.ndarray:
        """Rows of the ``count`` (default ``rerank``) best approximate matches, best first."""
        k = min(count or self.conf.rerank, self.index.ntotal)
        if k == 0:
            return np.zeros(0, np.int64)
        _, rows = self.index.search(self.project(query[None]), k)
        rows = rows[0]
        return rows[rows >= 0]

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def nbytes(self) -> int:
        """Memory of the index: codes, ids, coarse centroids, PQ codebooks and the PCA."""
        import faiss

        return int(faiss.serialize_index(self.index).nbytes + self.pca_a.nbytes)

    def save(self, path: Path) -> Path:
        import faiss

        return write_arrays(
            path,
            {
                "pca_a": self.pca_a,
                "pca_b": self.pca_b,
                "faiss": faiss.serialize_index(self.index),
                "conf": np.frombuffer(repr(asdict(self.conf)).encode(), np.uint8),
            },
        )

    @classmethod
    def load(cls, path: Path) -> CompressedIndex:
        import ast

        import faiss

        arrays = read_arrays(path)
        conf = IndexConfig(**ast.literal_eval(bytes(arrays["conf"]).decode()))
        index = faiss.deserialize_index(np.array(arrays["faiss"]))
        return cls(np.array(arrays["pca_a"]), np.array(arrays["pca_b"]), index, conf)


def project(vectors: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``vectors @ a.T + b``, converting float16 inputs a block of rows at a time."""
    return _project(vectors, a, b)


def _project(vectors: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((len(vectors), len(b)), np.float32)
    for start in range(0, len(vectors), 4096):  # float16 inputs converted a block at a time
        block = as_float32(vectors[start : start + 4096])
        out[start : start + len(block)] = block @ a.T + b
    return out


def exact_scores(blocks: list[np.ndarray], query: np.ndarray, rows: int = 256) -> np.ndarray:
    """``query`` against every row of ``blocks`` (e.g. memory-mapped float16), concatenated;
    converted to float32 ``rows`` rows at a time so no full float32 copy is made, and read
    with pread (core/flatfile.read_rows) so a worker maps none of the file."""
    q = np.asarray(query, np.float32)
    out = np.empty(sum(len(b) for b in blocks), np.float32)
    at = 0
    for block in blocks:
        for start in range(0, len(block), rows):
            chunk = as_float32(read_rows(block, start, start + rows))
            out[at : at + len(chunk)] = chunk @ q
            at += len(chunk)
    return out
