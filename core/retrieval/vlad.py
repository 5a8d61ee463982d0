"""VLAD global descriptors over the map's own local features (no learned retrieval weights).

At build, ``fit`` clusters a sample of the map's local descriptors with faiss k-means (the
codebook), aggregates each reference's residuals to its nearest visual words (VLAD, Jégou et al.
2010), applies intra-normalisation (Arandjelović & Zisserman 2013) and signed square-root power
normalisation, and stores codebook + per-reference descriptors in ``<map>/retrieval/vlad.npz``.
``shortlist`` ranks references by cosine similarity (one matrix product).

Extending a map: ``fit`` keeps an existing codebook and only describes references it has not
seen, so added images are retrievable without touching the old ones. A codebook fitted on one
place still describes a neighbouring place well; refit (``fit(ref_map, refit=True)``, or delete
``retrieval/vlad.npz`` and finalise) when the map has grown past ``refit_growth`` times the
references the codebook was fitted on — done automatically — or covers a different kind of scene.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from core import config
from core.errors import MapError
from core.retrieval.base import Retriever
from core.types import Features

if TYPE_CHECKING:
    from core.mapstore import ReferenceMap

STATE_FILE = "vlad.npz"


class VladRetriever(Retriever):
    """Options:

    - ``num_clusters``: codebook size (256 measured best on Getty with XFeat).
    - ``multi_assign``: each descriptor votes for its m nearest words (1 = classic VLAD).
    - ``train_per_image``: descriptors sampled per reference to fit the codebook.
    - ``kmeans_iters``: faiss k-means iterations.
    - ``position_pooling``: weight of the best view of the same position added to each
      reference's score (0 = off); views of one position share an (x, y).
    - ``refit_growth``: refit the codebook when the map holds this many times the references it
      was fitted on.
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

    conf: Conf  # this plug-in's options, merged over the defaults above

    def __init__(self, conf=None) -> None:
        super().__init__(conf)
        self.centroids: np.ndarray | None = None
        self.descriptors: np.ndarray | None = None  # (N, k*d) float32, rows in map order
        self._position_groups: np.ndarray | None = None

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
            centroids = self._fit_codebook(ref_map)
            fitted_on = len(ref_map)
            known: dict[str, np.ndarray] = {}
        else:
            centroids = state["centroids"]
            fitted_on = state["fitted_on"]
            known = dict(zip(state["ids"], state["descriptors"], strict=True))
        self.centroids = centroids
        desc = np.stack(
            [
                known[rid] if rid in known else self.describe(feats).astype(np.float16)
                for rid, feats in zip(ref_map.ids, ref_map.features, strict=True)
            ]
        )
        self._write_state(ref_map, centroids, list(ref_map.ids), desc, fitted_on)
        self.descriptors = desc.astype(np.float32)

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
        index = {rid: i for i, rid in enumerate(state["ids"])}
        missing = [rid for rid in ref_map.ids if rid not in index]
        if missing:
            raise MapError(
                f"map {ref_map.name!r}: {len(missing)} reference(s) have no VLAD descriptor "
                f"(e.g. {missing[0]!r}): finalise the map after adding images"
            )
        rows = np.array([index[rid] for rid in ref_map.ids], np.int64)
        self.descriptors = np.ascontiguousarray(state["descriptors"][rows], np.float32)
        self._position_groups = _position_groups(ref_map.positions)

    def shortlist(self, query: Features, ref_map: ReferenceMap, top_k: int | None):
        scores = self.scores(query, ref_map)
        n = len(scores)
        k = n if top_k is None else min(top_k, n)
        if k < n:
            part = np.argpartition(-scores, k - 1)[:k]
            order = part[np.argsort(-scores[part], kind="stable")]
        else:
            order = np.argsort(-scores, kind="stable")
        return order, scores[order].astype(np.float32)

    def scores(self, query: Features, ref_map: ReferenceMap) -> np.ndarray:
        """Similarity of the query to every reference, in map order (higher is closer)."""
        if self.descriptors is None or len(self.descriptors) != len(ref_map):
            self.prepare(ref_map)
        sims = self.descriptors @ self.describe(query)
        w = float(self.conf.position_pooling)
        if w > 0 and self._position_groups is not None:
            groups = self._position_groups
            best = np.full(groups.max() + 1, -np.inf, np.float32)
            np.maximum.at(best, groups, sims)
            sims = sims + w * best[groups]
        return sims

    def reference_similarity(self, index: int) -> np.ndarray | None:
        if self.descriptors is None:
            return None
        return self.descriptors @ self.descriptors[index]

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
            return {
                "centroids": z["centroids"].astype(np.float32),
                "ids": [str(s) for s in z["ids"]],
                "descriptors": z["descriptors"],
                "fitted_on": int(z["fitted_on"]),
                "conf": json.loads(str(z["conf"])),
            }

    def _write_state(self, ref_map, centroids, ids, descriptors, fitted_on) -> None:
        out = ref_map.retrieval_dir
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{STATE_FILE}.{uuid.uuid4().hex}.npz"
        np.savez(
            tmp,
            centroids=centroids,
            ids=np.array(ids, dtype=str),
            descriptors=descriptors.astype(np.float16),  # half the disk and memory
            fitted_on=np.int64(fitted_on),
            conf=json.dumps(self._codebook_conf()),
        )
        os.replace(tmp, out / STATE_FILE)


def _position_groups(positions: np.ndarray) -> np.ndarray:
    """Group id per reference: references with the same (x, y) share a group."""
    if len(positions) == 0:
        return np.zeros(0, np.int64)
    _, groups = np.unique(np.round(positions, 6), axis=0, return_inverse=True)
    return groups.ravel().astype(np.int64)
