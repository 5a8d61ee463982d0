"""VLAD global descriptors over the map's own local features (no learned retrieval weights).

At build, ``fit`` clusters a sample of the map's local descriptors with faiss k-means (the
codebook), aggregates each reference's residuals to its nearest visual words (VLAD, Jégou et al.
2010), applies intra-normalisation (Arandjelović & Zisserman 2013) and signed square-root power
normalisation. ``shortlist`` ranks references by cosine similarity.

State in ``<map>/retrieval/``: ``vlad.npz`` (codebook, settings, and the names of the files
below: it is replaced last, atomically, so readers see one consistent generation),
``vlad-desc-*.arr`` (ids + float16 descriptors of the references described by one ``fit``;
flat files, memory-mapped, shared by every worker process of a host) and, for maps of
``index_min_references`` or more, ``vlad-index-*.arr``: a compressed index (PCA + IVF-PQ,
``core/retrieval/index.py``) whose best ``rerank`` candidates are re-scored exactly.

Extending a map: ``fit`` keeps an existing codebook and only describes references it has not
seen (a new descriptor file; the index gets their projections added), so added images are
retrievable without touching the old ones. A codebook fitted on one place still describes a
neighbouring place well; refit (``fit(ref_map, refit=True)``, or delete ``retrieval/vlad.npz``
and finalise) when the map has grown past ``refit_growth`` times the references the codebook
was fitted on — done automatically, and likewise for the index — or covers another kind of scene.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field, field_validator

from core import config
from core.arrays import as_float32
from core.errors import MapError
from core.flatfile import read_arrays, read_rows, release_pages, take_rows, write_arrays
from core.positions import position_groups
from core.retrieval.base import Retriever
from core.retrieval.index import (
    INDEX_MIN_REFERENCES,
    CompressedIndex,
    IndexConfig,
    exact_scores,
    project,
)
from core.types import Features

if TYPE_CHECKING:
    from core.mapstore import ReferenceMap

STATE_FILE = "vlad.npz"
_DESCRIBE_PART = 8192  # references per descriptor file written by one fit
_STALE_SECONDS = 3600  # unreferenced state files older than this are removed by fit
# Most bytes of float32 descriptors a worker keeps resident for the exact pass (keep_resident):
# 6000 Getty references take 393 MB; bigger maps than this read them from disk per query.
RESIDENT_MAX_BYTES = 1 << 30


class VladRetriever(Retriever):
    """Options:

    - ``num_clusters``: codebook size (256 measured best on Getty with XFeat).
    - ``multi_assign``: each descriptor votes for its m nearest words (1 = classic VLAD).
    - ``train_per_image``: descriptors sampled per reference to fit the codebook.
    - ``kmeans_iters``: faiss k-means iterations.
    - ``position_pooling``: weight of the best view of the same position added to each
      reference's score (0 = off); views of one position share an (x, y).
    - ``refit_growth``: refit the codebook (and retrain the index) when the map holds this many
      times the references it was fitted on.
    - ``index_min_references``: from this map size on, shortlist through a compressed index
      (``core/retrieval/index.py``; 0: never) with ``index`` settings (IndexConfig fields).
    """

    name = "vlad"

    class Conf(config.Conf):
        num_clusters: int = Field(256, ge=1)
        multi_assign: int = Field(1, ge=1)
        train_per_image: int = Field(128, ge=1)
        kmeans_iters: int = Field(20, ge=1)
        position_pooling: float = 0.0
        refit_growth: float = 2.0
        seed: int = 0
        index_min_references: int = Field(INDEX_MIN_REFERENCES, ge=0)
        index: dict[str, Any] = Field(default_factory=dict)  # IndexConfig fields

        @field_validator("index")
        @classmethod
        def _index_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
            try:
                IndexConfig(**v)
            except TypeError as exc:
                raise ValueError(f"index: {exc}") from None
            return v

    conf: Conf  # this plug-in's options, merged over the defaults above

    def __init__(self, conf=None) -> None:
        super().__init__(conf)
        self.centroids: np.ndarray | None = None
        self.blocks: list[np.ndarray] = []  # float16 descriptor files, memory-mapped
        self.row_to_map = np.zeros(0, np.int64)  # state row -> map index (-1: not in the map)
        self.map_to_row = np.zeros(0, np.int64)  # map index -> state row
        self.index: CompressedIndex | None = None
        self._position_groups: np.ndarray | None = None
        self.resident_device: str | None = None  # keep_resident's device
        # The exact pass's descriptors (state-row order) in memory or on the device.
        self._resident: np.ndarray | torch.Tensor | None = None

    # --- build time -------------------------------------------------------------------------

    def fit(self, ref_map: ReferenceMap, refit: bool = False) -> None:
        if len(ref_map) == 0:
            raise MapError(f"map {ref_map.name!r} has no references to fit retrieval on")
        state = None if refit else self._read_state(ref_map)
        if state is not None and state["conf"] != self._codebook_conf():
            state = None  # codebook built with other settings
        if state is not None and len(ref_map) > self.conf.refit_growth * state["fitted_on"]:
            state = None
        if state is None:
            state = {
                "centroids": self._fit_codebook(ref_map),
                "fitted_on": len(ref_map),
                "desc_files": [],
                "index_file": "",
                "index_trained_on": 0,
            }
        self.centroids = state["centroids"]
        out = ref_map.retrieval_dir
        out.mkdir(parents=True, exist_ok=True)
        known = {str(i) for f in state["desc_files"] for i in read_arrays(out / f)["ids"]}
        new = [i for i, rid in enumerate(ref_map.ids) if rid not in known]
        before = sum(len(read_arrays(out / f)["ids"]) for f in state["desc_files"])
        for start in range(0, len(new), _DESCRIBE_PART):
            rows = new[start : start + _DESCRIBE_PART]
            desc = np.stack([self.describe(ref_map.features[i]) for i in rows])
            _store_descriptors(out, state, [ref_map.ids[i] for i in rows], desc)
        self._update_index(ref_map, state, before)
        self._write_state(ref_map, state)
        self.prepare(ref_map)

    def add_descriptors(self, ref_map: ReferenceMap, ids: list[str], desc: np.ndarray) -> None:
        """Store global descriptors computed elsewhere (the scale benchmark's distractors,
        ``bench/distractors.py``) for references of a fitted map; the next ``fit`` indexes them
        and describes nothing it finds here."""
        state = self._read_state(ref_map)
        if state is None:
            raise MapError(f"map {ref_map.name!r} has no VLAD state: finalise the map first")
        _store_descriptors(ref_map.retrieval_dir, state, ids, desc)
        self._write_state(ref_map, state)

    def _update_index(self, ref_map: ReferenceMap, state: dict, before: int) -> None:
        """Train, extend or drop the compressed index to match the descriptors now stored."""
        out = ref_map.retrieval_dir
        blocks = [read_arrays(out / f)["descriptors"] for f in state["desc_files"]]
        total = sum(len(b) for b in blocks)
        threshold = int(self.conf["index_min_references"])
        if not threshold or total < threshold:
            state["index_file"], state["index_trained_on"] = "", 0
            return
        grown = total > self.conf["refit_growth"] * max(state["index_trained_on"], 1)
        if state["index_file"] and not grown:
            index = CompressedIndex.load(out / state["index_file"])
            for block in _rows_from(blocks, before):
                index.add(block)
        else:
            rng = np.random.default_rng(self.conf["seed"])
            conf = IndexConfig(**self.conf["index"])
            pick = rng.permutation(total)
            pca = CompressedIndex.fit_pca(_take(blocks, pick[: conf.pca_sample]), conf.dim)
            train = pick[: conf.train_sample]
            step = 4096  # never the whole float32 sample at once
            chunks = [train[i : i + step] for i in range(0, len(train), step)]
            projections = np.concatenate([project(_take(blocks, c), *pca) for c in chunks])
            index = CompressedIndex.train(pca, projections, total, conf, self.conf["seed"])
            for block in blocks:
                index.add(block)
            state["index_trained_on"] = total
        name = f"vlad-index-{uuid.uuid4().hex}.arr"
        index.save(out / name)
        state["index_file"] = name

    def _codebook_conf(self) -> dict:
        keys = ("num_clusters", "multi_assign", "train_per_image", "kmeans_iters", "seed")
        return {k: self.conf[k] for k in keys}

    def _fit_codebook(self, ref_map: ReferenceMap) -> np.ndarray:
        import faiss

        rng = np.random.default_rng(self.conf.seed)
        per = int(self.conf.train_per_image)
        sample = []
        for feats in ref_map.features:
            n = len(feats)
            if n == 0:
                continue
            pick = rng.choice(n, size=min(per, n), replace=False)
            sample.append(np.asarray(feats.descriptors[pick], np.float32))
        train = np.ascontiguousarray(np.concatenate(sample))
        k = min(int(self.conf.num_clusters), len(train))
        if k < 2:
            raise MapError(f"map {ref_map.name!r} has too few local features for a codebook")
        km = faiss.Kmeans(
            train.shape[1],
            k,
            niter=int(self.conf.kmeans_iters),
            seed=int(self.conf.seed),
            max_points_per_centroid=1_000_000,  # use the whole sample, quietly
        )
        km.train(train)
        return np.asarray(km.centroids, np.float32)

    # --- load / query time ------------------------------------------------------------------

    def prepare(self, ref_map: ReferenceMap) -> None:
        state = self._read_state(ref_map)
        if state is None:
            raise MapError(f"map {ref_map.name!r} has no VLAD state: finalise the map first")
        self.centroids = state["centroids"]
        out = ref_map.retrieval_dir
        files = [read_arrays(out / f) for f in state["desc_files"]]
        self.blocks = [f["descriptors"] for f in files]
        ids = [str(i) for f in files for i in f["ids"]]
        self.row_to_map = np.array([ref_map.index.get(rid, -1) for rid in ids], np.int64)
        self.map_to_row = np.full(len(ref_map), -1, np.int64)
        valid = self.row_to_map >= 0
        self.map_to_row[self.row_to_map[valid]] = np.flatnonzero(valid)
        missing = np.flatnonzero(self.map_to_row < 0)
        if len(missing):
            raise MapError(
                f"map {ref_map.name!r}: {len(missing)} reference(s) have no VLAD descriptor "
                f"(e.g. {ref_map.ids[missing[0]]!r}): finalise the map after adding images"
            )
        index_file = state["index_file"]
        self.index = CompressedIndex.load(out / index_file) if index_file else None
        self._position_groups = position_groups(ref_map.positions)
        self._load_resident()

    def keep_resident(self, device: str) -> None:
        """Every query of a map without a compressed index scores all references exactly:
        read from disk, that is 6000 x 16,384 float16 values per query on Getty. Held as
        float32 instead (up to ``RESIDENT_MAX_BYTES``), the pass is one product: on the CPU
        NumPy's, whose sums equal the row-block products of ``exact_scores`` (the scores, so
        the shortlists, are unchanged); on a GPU torch's, in float32 (no TF32: torch's
        default for matmul), one copy of the scores back."""
        self.resident_device = device
        self._load_resident()

    @property
    def resident_bytes(self) -> int:
        """Bytes of descriptors held by ``keep_resident`` (0: the exact pass reads the disk)."""
        r = self._resident
        return 0 if r is None else int(r.nbytes if isinstance(r, np.ndarray) else r.nbytes)

    def _load_resident(self) -> None:
        self._resident = None
        rows = sum(len(b) for b in self.blocks)
        if self.resident_device is None or self.index is not None or not rows:
            return  # with an index only its candidates are re-scored (a few rows per query)
        if rows * self.blocks[0].shape[1] * 4 > RESIDENT_MAX_BYTES:
            return
        full = np.concatenate([as_float32(read_rows(b, 0, len(b))) for b in self.blocks])
        if self.resident_device == "cpu":
            self._resident = full
        else:
            self._resident = torch.from_numpy(full).to(self.resident_device)

    def release_pages(self) -> None:
        release_pages(self.blocks)

    def descriptor_rows(self, indices) -> np.ndarray:
        """Float32 descriptors of the references at ``indices`` (map order)."""
        return _take(self.blocks, self.map_to_row[np.asarray(indices, np.int64)])

    def shortlist(
        self,
        query: Features,
        ref_map: ReferenceMap,
        top_k: int | None,
        hidden: np.ndarray | None = None,
    ):
        if len(self.map_to_row) != len(ref_map):
            self.prepare(ref_map)
        q = self.describe(query)
        n = len(ref_map)
        k = n if top_k is None else min(top_k, n)
        if self.index is not None and k <= self.index.conf.rerank:
            rows = self.index.candidates(q)
            rows = rows[self.row_to_map[rows] >= 0]
            cand = self.row_to_map[rows]
            scores = self._pooled(cand, _take(self.blocks, rows) @ q)
        else:
            cand = np.arange(n)
            scores = self._pooled(cand, self.scores(query, ref_map, q))
        if hidden is not None:
            keep = ~hidden[cand]
            cand, scores = cand[keep], scores[keep]
        k = min(k, len(cand))
        if k < len(cand):
            part = np.argpartition(-scores, k - 1)[:k]
            order = part[np.argsort(-scores[part], kind="stable")]
        else:
            order = np.argsort(-scores, kind="stable")
        return cand[order], scores[order].astype(np.float32)

    def scores(
        self, query: Features, ref_map: ReferenceMap, described: np.ndarray | None = None
    ) -> np.ndarray:
        """Exact similarity of the query to every reference, in map order (higher is closer)."""
        if len(self.map_to_row) != len(ref_map):
            self.prepare(ref_map)
        q = self.describe(query) if described is None else described
        resident = self._resident
        if resident is None:
            scores = exact_scores(self.blocks, q)
        elif isinstance(resident, np.ndarray):
            scores = resident @ q
        else:
            scores = (resident @ torch.from_numpy(q).to(resident.device)).cpu().numpy()
        return scores[self.map_to_row]

    def _pooled(self, indices: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """Add ``position_pooling`` times the best score among the same position's views
        (of those scored: all references when exact, the re-ranked candidates with an index)."""
        w = float(self.conf["position_pooling"])
        if w <= 0 or self._position_groups is None or len(indices) == 0:
            return sims
        groups = self._position_groups[indices]
        best = np.full(groups.max() + 1, -np.inf, np.float32)
        np.maximum.at(best, groups, sims)
        return sims + w * best[groups]

    def reference_similarity(self, index: int, among: np.ndarray) -> np.ndarray | None:
        if not self.blocks:
            return None
        v = self.descriptor_rows([index])[0]
        return self.descriptor_rows(among) @ v

    def describe(self, feats: Features) -> np.ndarray:
        """The VLAD vector (k*d,) of one image's local features, unit length (zeros if none)."""
        c = self.centroids
        if c is None:
            raise MapError("VLAD codebook not loaded")
        k, d = c.shape
        if len(feats) == 0:
            return np.zeros(k * d, np.float32)
        x = np.asarray(feats.descriptors, np.float32)
        m = min(int(self.conf.multi_assign), k)
        # Squared distances up to a per-row constant: -2 x.c + |c|^2.
        dist = (c * c).sum(1)[None, :] - 2.0 * (x @ c.T)
        nearest = np.argpartition(dist, m - 1, axis=1)[:, :m]  # the m nearest words
        assign = np.zeros((len(x), k), np.float32)
        np.put_along_axis(assign, nearest, 1.0 / m, axis=1)
        v = assign.T @ x - assign.sum(0)[:, None] * c  # sum of residuals per word
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # intra-normalisation
        v = v.ravel()
        v = np.sign(v) * np.sqrt(np.abs(v))  # power normalisation: tames bursty words
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)

    # --- state on disk ----------------------------------------------------------------------

    def _read_state(self, ref_map: ReferenceMap) -> dict | None:
        path = ref_map.retrieval_dir / STATE_FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            if "desc_files" not in z:  # older state: keep its codebook, describe again
                return {
                    "centroids": z["centroids"].astype(np.float32),
                    "fitted_on": int(z["fitted_on"]),
                    "conf": json.loads(str(z["conf"])),
                    "desc_files": [],
                    "index_file": "",
                    "index_trained_on": 0,
                }
            return {
                "centroids": z["centroids"].astype(np.float32),
                "fitted_on": int(z["fitted_on"]),
                "conf": json.loads(str(z["conf"])),
                "desc_files": json.loads(str(z["desc_files"])),
                "index_file": str(z["index_file"]),
                "index_trained_on": int(z["index_trained_on"]),
            }

    def _write_state(self, ref_map: ReferenceMap, state: dict) -> None:
        out = ref_map.retrieval_dir
        tmp = out / f".{STATE_FILE}.{uuid.uuid4().hex}.npz"
        np.savez(
            tmp,
            centroids=state["centroids"],
            fitted_on=np.int64(state["fitted_on"]),
            conf=json.dumps(self._codebook_conf()),
            desc_files=json.dumps(state["desc_files"]),
            index_file=state["index_file"],
            index_trained_on=np.int64(state["index_trained_on"]),
        )
        os.replace(tmp, out / STATE_FILE)
        # Files of older generations: kept a while for workers still loading them.
        keep = {*state["desc_files"], state["index_file"]}
        for f in out.glob("vlad-*.arr"):
            if f.name not in keep and time.time() - f.stat().st_mtime > _STALE_SECONDS:
                f.unlink(missing_ok=True)


def _store_descriptors(out: Path, state: dict, ids: list[str], desc: np.ndarray) -> None:
    """One new descriptor file (float16) listed in ``state``; written before the state is."""
    name = f"vlad-desc-{uuid.uuid4().hex}.arr"
    write_arrays(
        out / name, {"ids": np.array(ids, dtype=str), "descriptors": desc.astype(np.float16)}
    )
    state["desc_files"].append(name)


def _take(blocks: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Float32 copies of the given rows of the concatenated blocks."""
    rows = np.asarray(rows, np.int64)
    dim = blocks[0].shape[1] if blocks else 0
    out = np.empty((len(rows), dim), np.float32)
    start = 0
    for block in blocks:
        inside = (rows >= start) & (rows < start + len(block))
        if inside.any():  # read with pread, not through the mapping (core/flatfile.py)
            out[inside] = as_float32(take_rows(block, rows[inside] - start))
        start += len(block)
    return out


def _rows_from(blocks: list[np.ndarray], first: int):
    """The rows of the concatenated blocks from ``first`` on, block by block."""
    start = 0
    for block in blocks:
        if start + len(block) > first:
            yield block[max(first - start, 0) :]
        start += len(block)
