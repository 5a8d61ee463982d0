"""The map's geometry (core/geometry.py) on the Getty map: its build cost, and placement by one
absolute pose against it beside the pairwise placement of core/placement.py.

    python -m bench.geometry --limit 150            # queries.csv, 1 thread
    python -m bench.geometry --queries queries_allviews.csv

Builds the geometry of every reference of the map of bench/accuracy.py once (resumable: parts
under ``<map>/geometry``; references that have it are skipped), printing seconds and bytes per
reference; then localises the queries with the default profile three ways in one run — no
placement, pairwise placement, the pose against the map's points (``placement_conf.method``) —
and prints MAE, median, within 1/5, the share placed and the placement stage's milliseconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.accuracy import MAP_NAME, load_queries
from bench.common import DEFAULT_OUT, GETTY, machine_info, print_table, write_json
from bench.getty_maps import ensure_map
from core import defaults
from core.geometry import GEOMETRY_DIR, build_geometry, write_geometry
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser

CHUNK = 250
METHODS = {
    "none": {"placement": False},
    "pairs": {"placement_conf": {"method": "pairs"}},
    "pose": {"placement_conf": {"method": "pose-only"}},
    "pose+pairs": {"placement_conf": {"method": "pose"}},
}


def ensure_geometry(loc: Localiser, log=print) -> dict:
    """Build the geometry of the references that lack it, in chunks; returns its cost."""
    ref_map = loc.map
    camera = ref_map.camera
    assert camera is not None, "the map needs its camera"
    todo = [i for i in range(len(ref_map)) if not ref_map.geometry.has(i)]
    matcher = loc.job_matcher(LocaliseOptions())
    size = ref_map.reference_size
    assert size is not None
    k = camera.matrix(size)  # Getty's photos are all one size
    t0 = time.perf_counter()
    geo = build_geometry(
        todo,
        ref_map.features,
        ref_map.positions,
        lambda _i: k,
        loc.retriever.reference_similarity,
        matcher.match,
        ref_map.ids,
    )
    items = [(ref_map.ids[i], g) for i, g in geo.items()]
    for start in range(0, len(items), CHUNK):  # parts of a build chunk's size
        write_geometry(ref_map.path, items[start : start + CHUNK])
    seconds = time.perf_counter() - t0
    log(f"  geometry of {len(todo)} references in {seconds:.0f} s")
    ref_map.geometry.refresh()
    size = sum(p.stat().st_size for p in (ref_map.path / GEOMETRY_DIR).glob("*"))
    with_points = [
        int((~np.isnan(g.points[:, 0])).sum())
        for i in range(0, len(ref_map), 10)
        if (g := ref_map.geometry[i]) is not None
    ]
    return {
        "built": len(todo),
        "s_per_reference": seconds / max(len(todo), 1),
        "bytes_per_reference": size / len(ref_map),
        "points_per_reference_median": float(np.median(with_points)) if with_points else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--getty", type=Path, default=GETTY)
    ap.add_argument("--queries", default="queries.csv")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not (args.getty / args.queries).is_file():
        print(f"skipped: {args.getty / args.queries} not found")
        return 0
    torch.set_num_threads(args.threads)
    store, _ = ensure_map(
        args.out, MAP_NAME, defaults.EXTRACTOR, defaults.RETRIEVER, getty=args.getty
    )
    loc = Localiser(store.open(MAP_NAME))
    cost = ensure_geometry(loc)
    print(
        f"geometry: {cost['built']} references built at {cost['s_per_reference']:.3f} s each, "
        f"{cost['bytes_per_reference'] / 1024:.1f} KiB per reference, "
        f"median {cost['points_per_reference_median']:.0f} points per reference"
    )
    queries = load_queries(args.getty, args.queries)[: args.limit]
    images = [(qid, read_image(p), np.array([x, y])) for qid, p, x, y in queries]
    loc.localise(images[0][1])  # warm-up
    rows, per_query = [], {}
    for name, options in METHODS.items():
        opts = LocaliseOptions.parse(options)
        errors, placed, place_ms, total = [], 0, [], []
        for qid, image, truth in images:
            t0 = time.perf_counter()
            res = loc.localise(image, opts)
            total.append(time.perf_counter() - t0)
            est = res.estimate
            errors.append(float(np.abs(np.array([est.x, est.y]) - truth).sum()))
            placed += est.method.endswith(("+pose", "+placement"))
            place_ms.append(1000 * res.timings.get("place", 0.0))
            per_query.setdefault(qid, {})[name] = (est.x, est.y, est.method)
        e = np.array(errors)
        rows.append([name, len(e), e.mean(), float(np.median(e)), f"{(e < 1).mean():.0%}",
                     f"{(e < 5).mean():.0%}", f"{placed / len(e):.0%}", np.mean(place_ms),
                     np.mean(total)])  # fmt: skip
    print_table(
        f"placement on {args.queries} ({len(images)} queries, {args.threads} thread)",
        ["method", "n", "MAE", "median", "<1", "<5", "placed", "place ms", "s/query"],
        rows,
    )
    path = write_json(args.out, "geometry", {"machine": machine_info(), "cost": cost,
                                               "rows": rows, "queries": per_query})  # fmt: skip
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
