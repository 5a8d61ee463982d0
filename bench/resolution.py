"""Queries at other resolutions than the map's: the Getty photos enlarged 2x, 4x and 6x.

Getty's references and queries are all 680x490, so the other benchmarks never see a photo of
another size. A client's photo usually has more pixels than the map's references (a phone's
12 MP against 680 px); the worker brings it to the map's scale before extraction
(core/querysize.py). This runs the first ``--limit`` photos of queries.csv at their own size and
enlarged (cubic interpolation), against the Getty map of bench/accuracy.py, and prints, per
scale: MAE, median, the share whose estimate is within 1 unit of the 1x estimate, seconds per
query (mean) and the extraction stage alone. ``--no-rescale`` runs the photos as they come (the
behaviour before core/querysize.py) for the comparison in one run.

    python -m bench.resolution --limit 20
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.accuracy import MAP_NAME
from bench.common import DEFAULT_OUT, GETTY, machine_info, print_table, write_json
from bench.getty_maps import ensure_map
from core import defaults, querysize
from core.images import read_image
from core.localiser import Localiser

SCALES = (1, 2, 4, 6)


def run(loc: Localiser, photos, scales) -> dict[int, list[dict]]:
    rows: dict[int, list[dict]] = {s: [] for s in scales}
    for qid, image, truth in photos:
        for s in scales:
            big = (
                image
                if s == 1
                else cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
            )
            t0 = time.perf_counter()
            res = loc.localise(big)
            est = res.estimate
            rows[s].append(
                {
                    "id": qid,
                    "x": est.x,
                    "y": est.y,
                    "error": float(np.abs(np.array([est.x, est.y]) - truth).sum()),
                    "localised": est.localised,
                    "seconds": time.perf_counter() - t0,
                    "extract_s": res.timings["extract"],
                    "query_size": res.query_size,
                }
            )
    return rows


def summary(rows: dict[int, list[dict]]) -> list[list]:
    base = {r["id"]: r for r in rows[1]}
    table = []
    for s, rs in rows.items():
        err = np.array([r["error"] for r in rs])
        same = np.mean(
            [abs(r["x"] - base[r["id"]]["x"]) + abs(r["y"] - base[r["id"]]["y"]) <= 1.0 for r in rs]
        )
        table.append(
            [
                f"{s}x",
                f"{rs[0]['query_size'][0]}x{rs[0]['query_size'][1]}",
                err.mean(),
                float(np.median(err)),
                f"{same:.0%}",
                np.mean([r["seconds"] for r in rs]),
                np.mean([r["extract_s"] for r in rs]),
            ]
        )
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--getty", type=Path, default=GETTY)
    ap.add_argument("--limit", type=int, default=20, help="the first N photos of queries.csv")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-rescale", action="store_true", help="also run without core/querysize")
    args = ap.parse_args(argv)
    if not (args.getty / "queries.csv").is_file():
        print(f"skipped: {args.getty / 'queries.csv'} not found")
        return 0
    torch.set_num_threads(args.threads)
    store, _ = ensure_map(
        args.out, MAP_NAME, defaults.EXTRACTOR, defaults.RETRIEVER, getty=args.getty
    )
    loc = Localiser(store.open(MAP_NAME))
    with (args.getty / "queries.csv").open(newline="") as f:
        queries = list(csv.DictReader(f))[: args.limit]
    photos = [
        (
            q["id"],
            read_image(args.getty / "images" / f"{q['id']}.jpg"),
            np.array([float(q["x"]), float(q["y"])]),
        )
        for q in queries
    ]
    loc.localise(photos[0][1])  # warm-up: lazy model and matcher set-up
    headers = ["scale", "extracted at", "MAE", "median", "= 1x", "s/query", "extract s"]
    result = {"machine": machine_info(), "threads": args.threads, "queries": len(photos)}
    rows = run(loc, photos, SCALES)
    print_table(f"brought to the map's scale ({len(photos)} queries)", headers, summary(rows))
    result["rescaled"] = rows
    if args.no_rescale:
        tolerance = querysize.TOLERANCE
        querysize.TOLERANCE = float("inf")  # every factor counts as 1: photos as they come
        try:
            plain = run(loc, photos, SCALES)
        finally:
            querysize.TOLERANCE = tolerance
        print_table("as they come (no rescaling)", headers, summary(plain))
        result["as_they_come"] = plain
    print(f"written {write_json(args.out, 'resolution', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
