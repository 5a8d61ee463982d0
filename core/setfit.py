"""A photo set's confidence, calibrated on the map's own positions.

A set's raw confidence is its pooled estimate's (core/photoset.py): several photos' inliers at
one place, a figure one photo seldom reaches, so reading it through the single-photo curve
understates it. The map measures sets as it measures single photos (core/heldout.py): at
held-out positions with two views or more, every view is localised with the position hidden,
and the views' results are pooled (:func:`core.photoset.pool_photos`) in every subset of two or
more of them. The pooled answers give the "set" curve: P(error < 5) against the pooled raw
confidence, fitted by isotonic regression as the single-photo curve is.

Rows go to ``heldout-sets.jsonl`` in the map folder, one line per position (resumable: a
position measured is not measured again); the curve and its figures join ``training.json``
(``calibration.set`` and ``set_fit``), which a later single-photo fit keeps.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.calibration import isotonic
from core.evaluation import hits, l1_error, map_centroid
from core.heldout import hidden_mask, require_map_of
from core.images import read_image
from core.mapstore import MapStore, write_training
from core.positions import position_groups

if TYPE_CHECKING:  # the models load only when a set fit runs
    from core.localiser import Localiser

SETS_FILE = "heldout-sets.jsonl"
MAX_VIEWS = 5  # views pooled per position: 26 subsets of 2..5


@dataclass
class SetRow:
    """One held-out position: each subset of its views, pooled, as (size, raw confidence,
    error of the pooled answer or, declined without one, of the map's centroid)."""

    position: list[float]
    reference_ids: list[str]
    subsets: list[tuple[int, float, float]]


def sample_positions(groups: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """The map rows of ``n`` positions with two views or more, chosen reproducibly."""
    multi = [g for g in np.unique(groups) if (groups == g).sum() >= 2]
    rng = np.random.default_rng(seed)
    return [np.flatnonzero(groups == g)[:MAX_VIEWS] for g in rng.permutation(multi)[:n]]


def read_set_rows(path: Path) -> list[SetRow]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: measured again
            continue
        rows.append(SetRow(data["position"], data["reference_ids"],
                           [tuple(s) for s in data["subsets"]]))  # fmt: skip
    return rows


def measure_position(
    localiser: Localiser, rows: np.ndarray, image_of: Callable[[str], Path]
) -> SetRow:
    from core.localiser import LocaliseOptions
    from core.photoset import pool_photos

    ref_map = localiser.map
    options = LocaliseOptions.parse({"profile": "fast"})
    hidden = hidden_mask(ref_map, int(rows[0]))
    # Each photo through the single-photo fit, as core/photoset.localise_set localises them:
    # whether a photo localised on its own decides where the set's photos disagree.
    results = [
        localiser.localise(read_image(image_of(ref_map.ids[r])), options, hidden) for r in rows
    ]
    truth = ref_map.positions[rows[0]]
    centroid = map_centroid(ref_map.positions)
    subsets = []
    for size in range(2, len(results) + 1):
        for chosen in itertools.combinations(results, size):
            est = pool_photos(chosen, options).estimate
            x, y = (est.x, est.y) if est.x is not None and est.y is not None else centroid
            subsets.append((size, float(est.confidence), l1_error(x, y, *truth)))
    return SetRow([float(truth[0]), float(truth[1])], [ref_map.ids[r] for r in rows], subsets)


def fit_sets(
    store: MapStore,
    name: str,
    image_of: Callable[[str], Path],
    positions: int,
    localiser: Localiser,
    seed: int = 0,
    on_done: Callable[[SetRow], None] | None = None,
) -> dict[str, Any]:
    """Measure sets at ``positions`` held-out positions (resuming from the rows file) and
    store the "set" curve in the map's training record; returns the figures stored."""
    require_map_of(localiser, store, name)
    ref_map = localiser.map
    path = ref_map.path / SETS_FILE
    done = {tuple(r.reference_ids): r for r in read_set_rows(path)}
    rows = []
    with path.open("a") as f:
        for chosen in sample_positions(position_groups(ref_map.positions), positions, seed):
            key = tuple(ref_map.ids[r] for r in chosen)
            row = done.get(key)
            if row is None:
                row = measure_position(localiser, chosen, image_of)
                f.write(json.dumps(asdict(row)) + "\n")
                f.flush()
                if on_done:
                    on_done(row)
            rows.append(row)
    if not rows:
        raise ValueError(f"map {name!r} has no position with two views or more")
    subsets = np.array([s for r in rows for s in r.subsets], np.float64).reshape(-1, 3)
    sizes, scores, errors = subsets.T
    figures = {
        "positions": len(rows),
        "subsets": len(scores),
        "seed": seed,
        "by_size": {
            str(int(k)): {
                "mae": float(errors[sizes == k].mean()),
                "within_5": float(hits(errors[sizes == k]).mean()),
            }
            for k in np.unique(sizes)
        },
    }
    record = store.training(name)
    record.setdefault("calibration", {})["set"] = isotonic(scores, hits(errors))
    record["set_fit"] = figures
    write_training(store.path(name), record)
    return figures
