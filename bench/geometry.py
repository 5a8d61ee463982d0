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

import cv2
import numpy as np
import torch

from bench.accuracy import MAP_NAME, load_queries
from bench.common import DEFAULT_OUT, GETTY, machine_info, print_table, write_json
from bench.getty_maps import ensure_map, getty_image
from core import defaults
from core.geometry import GEOMETRY_DIR, build_geometry, write_geometry
from core.heldout import hidden_mask, sample_heldout
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapstore import MapStore

CHUNK = 100
METHODS = {  # in this order: the first finds the places whose geometry the others need
    "none": {"placement": False},
    "pose+pairs": {"placement_conf": {"method": "pose"}},
    "pose": {"placement_conf": {"method": "pose-only"}},
    "pairs": {"placement_conf": {"method": "pairs"}},
}


def ensure_geometry(loc: Localiser, wanted: list[int] | None = None, log=print) -> dict:
    """Build the geometry of the references (all, or ``wanted``) that lack it, a chunk of
    ``CHUNK`` at a time, each chunk stored as it is done (an interrupted run resumes);
    returns its cost."""
    ref_map = loc.map
    camera = ref_map.camera
    assert camera is not None, "the map needs its camera"
    rows = range(len(ref_map)) if wanted is None else sorted(set(wanted))
    todo = [i for i in rows if not ref_map.geometry.has(i)]
    matcher = loc.job_matcher(LocaliseOptions())
    size = ref_map.reference_size
    assert size is not None
    k = camera.matrix(size)  # Getty's photos are all one size
    seconds, cpu = 0.0, 0.0
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        t0, c0 = time.perf_counter(), time.process_time()
        geo = build_geometry(
            chunk,
            ref_map.features,
            ref_map.positions,
            lambda _i: k,
            loc.retriever.reference_similarity,
            matcher.match,
            ref_map.ids,
            known_heading=ref_map.geometry.heading,
        )
        write_geometry(ref_map.path, [(ref_map.ids[i], g) for i, g in geo.items()])
        ref_map.geometry.refresh()
        seconds += time.perf_counter() - t0
        cpu += time.process_time() - c0
        log(f"  geometry: {start + len(chunk)}/{len(todo)} references, {seconds:.0f} s")
    size = sum(p.stat().st_size for p in (ref_map.path / GEOMETRY_DIR).glob("*"))
    with_points = [
        int((~np.isnan(g.points[:, 0])).sum())
        for i in rows
        if (g := ref_map.geometry[i]) is not None
    ]
    return {
        "built": len(todo),
        "s_per_reference": seconds / max(len(todo), 1),
        "cpu_s_per_reference": cpu / max(len(todo), 1),
        "bytes_per_reference": size / max(ref_map.geometry.count(), 1),
        "points_per_reference_median": float(np.median(with_points)) if with_points else 0.0,
    }


Item = tuple[str, np.ndarray, np.ndarray, np.ndarray | None]  # id, photo, truth, hidden


def load_items(
    loc: Localiser, getty: Path, queries_csv: str, limit: int | None, heldout: int
) -> tuple[list[Item], str]:
    """The photos to localise and a title: ``heldout`` of the map's own positions (one view
    each, its position hidden: core/heldout.py; these may choose), else the queries."""
    if heldout:
        rows = sample_heldout(loc.map, heldout, seed=0)
        photo = getty_image(getty)
        items = [(loc.map.ids[r], read_image(photo(loc.map.ids[r])), loc.map.positions[r].copy(),
                  hidden_mask(loc.map, r)) for r in rows]  # fmt: skip
        return items, f"{len(items)} held-out positions of the map"
    queries = load_queries(getty, queries_csv)[:limit]
    items = [(qid, read_image(p), np.array([x, y]), None) for qid, p, x, y in queries]
    return items, f"{queries_csv} ({len(items)} queries)"


def localise_all(
    runs: list[tuple[Localiser, dict]], items: list[Item]
) -> list[tuple[list, dict, set]]:
    """Each run (a localiser and job options) over ``items``, interleaved item by item in an
    order that alternates, so no run gets a warmer page cache or a quieter machine than
    another. Per run: a table row (n, MAE, median, within 1 and 5, placed, posed, placement ms,
    s/query, CPU s/query), each item's (x, y, method), and the references of the places found."""
    opts = [LocaliseOptions.parse(options) for _, options in runs]
    errors: list[list[float]] = [[] for _ in runs]
    placed, posed, cpu = [0] * len(runs), [0] * len(runs), [0.0] * len(runs)
    place_ms: list[list[float]] = [[] for _ in runs]
    total: list[list[float]] = [[] for _ in runs]
    answers: list[dict] = [{} for _ in runs]
    supports: list[set] = [set() for _ in runs]
    for n, (qid, image, truth, hidden) in enumerate(items):
        order = range(len(runs)) if n % 2 == 0 else reversed(range(len(runs)))
        for k in order:
            loc = runs[k][0]
            t0, c0 = time.perf_counter(), time.process_time()
            # Held-out views: their position's views hidden, and the points made with them
            # (core/geometry.ReferenceGeometry.usable), as a query from a new position.
            res = loc.localise(image, opts[k], hidden, calibrated=hidden is None)
            total[k].append(time.perf_counter() - t0)
            cpu[k] += time.process_time() - c0
            est = res.estimate
            errors[k].append(float(np.abs(np.array([est.x, est.y]) - truth).sum()))
            placed[k] += est.method.endswith(("+pose", "+placement"))
            posed[k] += est.method.endswith("+pose")
            place_ms[k].append(1000 * res.timings.get("place", 0.0))
            answers[k][qid] = (est.x, est.y, est.method)
            supports[k].update(loc.map.index[rid] for rid in est.support)
    out = []
    for k in range(len(runs)):
        e = np.array(errors[k])
        row = [len(e), e.mean(), float(np.median(e)), f"{(e < 1).mean():.0%}",
               f"{(e < 5).mean():.0%}", f"{placed[k] / len(e):.0%}", f"{posed[k] / len(e):.0%}",
               float(np.mean(place_ms[k])), float(np.mean(total[k])), cpu[k] / len(e)]  # fmt: skip
        out.append((row, answers[k], supports[k]))
    return out


def run_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a run on the Getty map: output folder, Getty folder, queries file and
    how many of them, threads."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--getty", type=Path, default=GETTY)
    ap.add_argument("--queries", default="queries.csv")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    return ap


def open_map(args: argparse.Namespace) -> MapStore | None:
    """The Getty map of bench/accuracy.py (built once), with torch and OpenCV on
    ``args.threads`` threads as a worker runs them; None (said) without the queries file."""
    if not (args.getty / args.queries).is_file():
        print(f"skipped: {args.getty / args.queries} not found")
        return None
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)  # as a worker does (workers/runtime.py)
    store, _ = ensure_map(
        args.out, MAP_NAME, defaults.EXTRACTOR, defaults.RETRIEVER, getty=args.getty
    )
    return store


def main(argv: list[str] | None = None) -> int:
    ap = run_arguments(__doc__.split("\n\n")[0])
    ap.add_argument(
        "--heldout",
        type=int,
        default=0,
        help="localise this many of the map's own held-out positions (core/heldout.py: one "
        "view each, its position hidden) instead of the queries: the figures that may choose",
    )
    ap.add_argument(
        "--needed-only",
        action="store_true",
        help="build the geometry only of the references the queries' places use (found by a "
        "first run without placement), not of the whole map: the cost per reference is the "
        "same, the run far shorter",
    )
    args = ap.parse_args(argv)
    store = open_map(args)
    if store is None:
        return 0
    loc = Localiser(store.open(MAP_NAME))
    items, title = load_items(loc, args.getty, args.queries, args.limit, args.heldout)
    loc.localise(items[0][1])  # warm-up
    rows_out, per_query, supports = [], {}, set()
    cost: dict = {}
    for name, options in METHODS.items():
        if name != "none" and not cost:  # the geometry, once the unplaced run found the places
            cost = ensure_geometry(loc, sorted(supports) if args.needed_only else None)
            print(
                f"geometry: {cost['built']} references built at {cost['s_per_reference']:.3f} s "
                f"each ({cost['cpu_s_per_reference']:.3f} CPU s), "
                f"{cost['bytes_per_reference'] / 1024:.1f} KiB per reference, "
                f"median {cost['points_per_reference_median']:.0f} points per reference",
                flush=True,
            )
        ((row, answers, found),) = localise_all([(loc, options)], items)
        rows_out.append([name, *row])
        supports |= found
        for qid, answer in answers.items():
            per_query.setdefault(qid, {})[name] = answer
        print(f"  {name}: {rows_out[-1]}", flush=True)
    print_table(
        f"placement on {title}, {args.threads} thread",
        [
            "method",
            "n",
            "MAE",
            "median",
            "<1",
            "<5",
            "placed",
            "posed",
            "place ms",
            "s/query",
            "cpu s/q",
        ],  # fmt: skip
        rows_out,
    )
    name = "geometry-heldout.json" if args.heldout else "geometry.json"
    path = write_json(args.out, name, {"machine": machine_info(), "cost": cost,
                                               "rows": rows_out, "queries": per_query})  # fmt: skip
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
