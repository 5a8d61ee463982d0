"""Distractor references for the scale benchmark (``bench/scale.py``): references of no real
place, so that a map of the real Getty references can be grown to 100,000 or 1,000,000.

A distractor *j* is a *group chimera*: each of a few groups of VLAD visual words comes from one
of two real references at different positions (renormalised), so its global descriptor is as
real in its parts as any reference and ties with none. Retrieval-only runs never store them
(``GroupChimeras`` scores and projects them from per-group sums); full-pipeline runs write them
into a copy of the map (``write_distractor_map``), with the local features of the first of
their two sources at a far-away position, so a distractor that is shortlisted costs a real
match and verification and can never count as a hit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from core.mapstore import MapStore, Reference, ReferenceMap, write_manifest, write_part

FAR_AWAY = 1e6  # added to a distractor's x: no query's truth is within 5 of it


class GroupChimeras:
    """Distractor global descriptors that need no storage: distractor j takes each of ``groups``
    word groups (word w is in group w mod groups) from one of two real references at different
    positions, then is renormalised. Exact full-dimensional scores and PCA projections of any
    distractor follow from per-reference, per-group sums, so a million of them cost a few
    hundred MiB and their exact search stays exact."""

    def __init__(
        self,
        real: np.ndarray,
        positions: np.ndarray,
        words: int,
        count: int,
        groups: int = 8,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        n, dim = real.shape
        self.real = real
        self.group_of_col = (np.arange(dim) // (dim // words)) % groups
        self.groups = groups
        a = rng.integers(0, n, count)
        b = rng.integers(0, n, count)
        same = np.all(positions[a] == positions[b], axis=1)
        b[same] = (b[same] + n // 2) % n  # another place (the map spans many positions)
        take_a = rng.random((count, groups)) < 0.5
        take_a[:, 0], take_a[:, 1] = True, False  # both sources: never a copy of either
        self.src = np.where(take_a, a[:, None], b[:, None]).astype(np.int32)  # (count, G)
        sq = self._per_group(real * real)  # (n, G) squared norms
        self.norm = np.sqrt(sq[self.src, np.arange(groups)].sum(1)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.src)

    def _per_group(self, values: np.ndarray) -> np.ndarray:
        """Sum of ``values`` (n, D) over each group's columns: (n, G)."""
        return np.stack(
            [values[:, self.group_of_col == g].sum(1) for g in range(self.groups)], axis=1
        )

    def query_sums(self, query: np.ndarray) -> np.ndarray:
        """Per real reference and group, its dot product with ``query``: (n, G). Computed once
        per query, outside the timed shortlist: it stands in for reading stored descriptors."""
        return self._per_group(self.real * query[None, :])

    def scores(self, per: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Exact cosines with the distractors ``rows`` (all when None), from ``query_sums``."""
        src = self.src if rows is None else self.src[rows]
        norm = self.norm if rows is None else self.norm[rows]
        return per[src, np.arange(self.groups)].sum(1) / norm

    def descriptors(self, rows: np.ndarray) -> np.ndarray:
        """Full float32 descriptors of the distractors ``rows`` (for maps that store them)."""
        out = np.empty((len(rows), self.real.shape[1]), np.float32)
        for g in range(self.groups):
            cols = self.group_of_col == g
            out[:, cols] = self.real[self.src[rows, g]][:, cols]
        return out / self.norm[rows, None]

    def projections(self, a: np.ndarray, b: np.ndarray, chunk: int = 50_000):
        """PCA projections ``x @ a.T + b`` of every distractor, ``chunk`` rows at a time."""
        per = np.stack(
            [
                self.real[:, self.group_of_col == g] @ a[:, self.group_of_col == g].T
                for g in range(self.groups)
            ],
            axis=1,
        )  # (n, G, dim)
        for start in range(0, len(self), chunk):
            src = self.src[start : start + chunk]
            acc = per[src[:, 0], 0].copy()
            for g in range(1, self.groups):
                acc += per[src[:, g], g]
            yield acc / self.norm[start : start + chunk, None] + b


def _link_tree(src: Path, dest: Path) -> None:
    """Hard links of every file of ``src`` under ``dest`` (copies across file systems). Map
    files are replaced by rename, never rewritten in place, so the copy cannot alter ``src``."""
    for root, _dirs, files in os.walk(src):
        out = dest / Path(root).relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            try:
                os.link(Path(root) / f, out / f)
            except OSError:
                shutil.copy2(Path(root) / f, out / f)


def write_distractor_map(
    src: ReferenceMap,
    store: MapStore,
    name: str,
    total: int,
    chunk: int = 2000,
    seed: int = 0,
) -> Path:
    """A copy of ``src`` named ``name`` in ``store`` grown to ``total`` references with group
    chimeras: their local features in extra parts, their VLAD descriptors in extra descriptor
    files of the retrieval state. Finalise the map afterwards (the index is fitted then)."""
    from core.registry import retriever_class

    path = store.path(name)
    if path.exists():
        shutil.rmtree(path)
    _link_tree(src.path, path)
    # The real references' codebook describes the distractors: no refit when the map grows.
    conf = {**(src.retriever.get("conf") or {}), "refit_growth": max(total / len(src), 1) + 1}
    retriever_conf = {**src.retriever, "conf": conf}
    write_manifest(path, {**src.manifest, "name": name, "retriever": retriever_conf})
    retriever = retriever_class(src.retriever["name"])(conf)
    retriever.prepare(src)
    real = retriever.descriptor_rows(np.arange(len(src)))
    extra = max(total - len(src), 0)
    chimeras = GroupChimeras(real, src.positions, retriever.centroids.shape[0], extra, seed=seed)
    described = []
    for start in range(0, extra, chunk):
        rows = np.arange(start, min(start + chunk, extra))
        ids = [f"distractor-{j:07d}" for j in rows]
        first = chimeras.src[rows, 0]
        items = [
            (
                # Each alone, 10 apart: no two distractors vote for one place.
                Reference(rid, FAR_AWAY + 10.0 * j, float(src.positions[a, 1])),
                src.features[int(a)],
            )
            for rid, j, a in zip(ids, rows, first, strict=True)
        ]
        write_part(path, items, name=f"part-distractors-{start // chunk:05d}.feat")
        described.append((ids, rows))
    copy = store.open(name)
    for ids, rows in described:  # after the parts: the map knows the references described
        retriever.add_descriptors(copy, ids, chimeras.descriptors(rows))
    return path
