"""The map report on the Getty set (issue 26): every reference position measured, and whether
the report predicts where real queries fail.

Reproduce (from the repository root, venv active; the first run builds the coarse map, as
bench/accuracy.py does):

    python -m bench.map_report --out bench/out --kill-after 60

1. Measures every one of the map's positions with the fast profile (``fit_map(queries=None)``,
   one view each, rows in the map's ``heldout.jsonl``); with ``--kill-after S`` the measurement
   first runs in a child process that is killed with SIGKILL after S seconds, then resumes
   here; the rows file is then checked for rows lost (a position measured twice over, or not at
   all) or duplicated (one view on two lines).
2. Prints the seconds per position (the rows' own ``seconds``: localisation of one view with
   its position hidden, photo decoding included).
3. Localises every view of ``queries_allviews.csv`` with the fast profile (kept in
   ``<out>/map_report_queries.jsonl``, resumable) and compares, area by area of the report
   (core/mapreport.py), the report's held-out MAE with the MAE of the queries that fall in the
   area: Spearman's rank correlation across areas holding at least ``--min-queries`` query
   views, and the query MAE in the report's worst and best quarter of areas. The queries are
   measured, never tuned on.

Writes ``<out>/map_report.json`` and the report itself (``featureloc map report``'s files)
under ``<out>/map_report``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from bench.accuracy import MAP_NAME, load_queries
from bench.getty_maps import GETTY, ensure_map, getty_image
from core import defaults
from core.evaluation import map_centroid, score_result
from core.heldout import HELDOUT_FILE, fit_map, read_rows
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapreport import MapReport, area_of, map_report
from core.mapstore import MapStore


def measure(out: Path, getty: Path) -> None:
    """Every position of the map, resumable (what the killed child runs too)."""
    store = MapStore(out / "maps")
    fit_map(store, MAP_NAME, getty_image(getty), queries=None)


def killed_run(out: Path, getty: Path, seconds: float) -> None:
    """The measurement in a child process, killed with SIGKILL after ``seconds``."""
    cmd = [sys.executable, "-m", "bench.map_report", "--out", str(out), "--getty", str(getty),
           "--measure-only"]  # fmt: skip
    child = subprocess.Popen(cmd, start_new_session=True)
    time.sleep(seconds)
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.wait()


def row_check(path: Path) -> dict:
    """Lines of the rows file that parse, and reference ids on more than one of them."""
    ids = []
    bad = 0
    for line in path.read_text().splitlines():
        try:
            ids.append(json.loads(line)["reference_id"])
        except (json.JSONDecodeError, KeyError):
            bad += 1
    twice = [rid for rid, n in Counter(ids).items() if n > 1]
    return {"lines": len(ids), "distinct": len(set(ids)), "duplicated": twice, "cut": bad}


def query_errors(out: Path, getty: Path, store: MapStore, csv_name: str) -> list[dict]:
    """Every query view localised with the fast profile: truth and error, kept line by line."""
    path = out / "map_report_queries.jsonl"
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["id"]] = row
    todo = [q for q in load_queries(getty, csv_name) if q[0] not in done]
    if todo:
        loc = Localiser(store.open(MAP_NAME))
        fast = LocaliseOptions.parse({"profile": "fast"})
        centroid = map_centroid(loc.map.positions)
        with path.open("a") as f:
            for qid, photo, x, y in todo:
                t0 = time.perf_counter()
                res = loc.localise(read_image(photo), fast)
                row = score_result(qid, (x, y), res, time.perf_counter() - t0, centroid)
                done[qid] = {"id": qid, "x": x, "y": y, "error": row.error,
                             "localised": row.localised, "seconds": row.seconds}  # fmt: skip
                f.write(json.dumps(done[qid]) + "\n")
                f.flush()
    return list(done.values())


def agreement(report: MapReport, queries: list[dict], min_queries: int) -> dict:
    """The report's held-out MAE per area against the MAE of the query views in it."""
    from scipy.stats import pearsonr, spearmanr

    by_area: dict[tuple[float, float], list[float]] = {}
    held: dict[tuple[float, float], float] = {}
    outside = 0
    for q in queries:
        area = area_of(report, q["x"], q["y"])
        if area is None:
            outside += 1
            continue
        key = (area.x0, area.y0)
        by_area.setdefault(key, []).append(q["error"])
        held[key] = area.mae
    keys = [k for k, errs in by_area.items() if len(errs) >= min_queries]
    pred = np.array([held[k] for k in keys])
    real = np.array([np.mean(by_area[k]) for k in keys])
    order = np.argsort(pred)
    quarter = max(1, len(keys) // 4)

    def pooled(idx: np.ndarray) -> float:
        return float(np.mean([e for i in idx for e in by_area[keys[i]]]))

    per_query = [(held[(a.x0, a.y0)], q["error"]) for q in queries
                 if (a := area_of(report, q["x"], q["y"])) is not None]  # fmt: skip
    pq = np.array(per_query)
    suggested = {(s.area[0], s.area[1]) for s in report.suggestions}
    in_suggested = [e for k, errs in by_area.items() if k in suggested for e in errs]
    elsewhere = [e for k, errs in by_area.items() if k not in suggested for e in errs]
    return {
        "areas": len(keys),
        "min_queries": min_queries,
        "queries_outside_areas": outside,
        "spearman_areas": float(spearmanr(pred, real).statistic),
        "pearson_areas": float(pearsonr(pred, real).statistic),
        "spearman_queries": float(spearmanr(pq[:, 0], pq[:, 1]).statistic),
        "worst_quarter_query_mae": pooled(order[-quarter:]),
        "best_quarter_query_mae": pooled(order[:quarter]),
        "worst_quarter_heldout_mae": float(pred[order[-quarter:]].mean()),
        "best_quarter_heldout_mae": float(pred[order[:quarter]].mean()),
        "suggested_areas_query_mae": float(np.mean(in_suggested)) if in_suggested else None,
        "suggested_areas_queries": len(in_suggested),
        "other_areas_query_mae": float(np.mean(elsewhere)) if elsewhere else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--getty", type=Path, default=GETTY)
    ap.add_argument("--queries", default="queries_allviews.csv")
    ap.add_argument("--kill-after", type=float, default=None, help="SIGKILL a first run after S s")
    ap.add_argument("--min-queries", type=int, default=5, help="query views an area needs")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (this box: 2 cores)")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not (args.getty / args.queries).is_file():
        print(f"skipped: {args.getty / args.queries} not found")
        return 0
    torch.set_num_threads(args.threads)
    if args.measure_only:
        measure(args.out, args.getty)
        return 0
    store, build = ensure_map(args.out, MAP_NAME, defaults.EXTRACTOR, defaults.RETRIEVER,
                              getty=args.getty)  # fmt: skip
    store.set_images_dir(MAP_NAME, args.getty / "images")  # the report's worst places' photos
    rows_path = store.path(MAP_NAME) / HELDOUT_FILE
    result: dict = {"build": build, "threads": args.threads}
    if args.kill_after is not None:
        before = len(read_rows(rows_path))
        killed_run(args.out, args.getty, args.kill_after)
        after_kill = row_check(rows_path)
        print(f"killed after {args.kill_after:.0f} s: {after_kill['distinct'] - before} rows "
              f"written by the killed run; file {after_kill}")  # fmt: skip
        result["kill"] = {"seconds": args.kill_after, "rows_before": before, **after_kill}
    t0 = time.perf_counter()
    measure(args.out, args.getty)
    wall = time.perf_counter() - t0
    check = row_check(rows_path)
    rows = read_rows(rows_path)
    positions = len({(r.truth_x, r.truth_y) for r in rows})
    total = len(np.unique(store.open(MAP_NAME).positions, axis=0))
    secs = np.array([r.seconds for r in rows])
    result["measurement"] = {
        "positions": positions, "of": total, "rows": len(rows), "file": check,
        "seconds_per_position_mean": float(secs.mean()),
        "seconds_per_position_median": float(np.median(secs)),
        "seconds_per_position_p90": float(np.percentile(secs, 90)),
        "wall_seconds_this_run": wall,
    }  # fmt: skip
    print(f"measured {positions} of {total} positions ({len(rows)} rows; file: {check['lines']} "
          f"lines, {check['distinct']} distinct, {len(check['duplicated'])} duplicated, "
          f"{check['cut']} cut); seconds per position: mean {secs.mean():.2f}, median "
          f"{np.median(secs):.2f}, p90 {np.percentile(secs, 90):.2f}")  # fmt: skip

    report = map_report(store, MAP_NAME)
    result["report"] = {k: v for k, v in report.to_json().items() if not isinstance(v, list)}
    result["report"]["holes"] = len(report.holes)
    result["report"]["areas"] = len(report.areas)
    result["report"]["suggestions"] = [
        (round(s.x, 1), round(s.y, 1), round(s.mae, 1)) for s in report.suggestions
    ]
    print(f"report: held-out MAE {report.mae:.2f}, median {report.median:.2f}, within 5 "
          f"{report.within_5:.0%}, localised {report.localised:.0%}; spacing "
          f"{report.spacing:.2f}, {len(report.areas)} areas of {report.area_size:.1f}, "
          f"{len(report.holes)} holes, ECE {report.ece:.3f}")  # fmt: skip
    t0 = time.perf_counter()
    queries = query_errors(args.out, args.getty, store, args.queries)
    errs = np.array([q["error"] for q in queries])
    qsecs = np.array([q["seconds"] for q in queries])
    print(f"{len(queries)} query views ({args.queries}): MAE {errs.mean():.2f}, median "
          f"{np.median(errs):.2f}, {qsecs.mean():.2f} s per query view "
          f"({time.perf_counter() - t0:.0f} s this run)")  # fmt: skip
    result["queries"] = {"views": len(queries), "mae": float(errs.mean()),
                         "median": float(np.median(errs)),
                         "seconds_per_query_mean": float(qsecs.mean())}  # fmt: skip
    agree = agreement(report, queries, args.min_queries)
    result["agreement"] = agree
    print(f"agreement over {agree['areas']} areas with >= {args.min_queries} query views: "
          f"Spearman {agree['spearman_areas']:.2f} (Pearson {agree['pearson_areas']:.2f}); "
          f"per query view Spearman {agree['spearman_queries']:.2f}")  # fmt: skip
    worst, best = agree["worst_quarter_heldout_mae"], agree["best_quarter_heldout_mae"]
    print(f"  query MAE in the report's worst quarter of areas "
          f"{agree['worst_quarter_query_mae']:.2f} (held-out {worst:.2f}) vs best quarter "
          f"{agree['best_quarter_query_mae']:.2f} (held-out {best:.2f})")  # fmt: skip
    if agree["suggested_areas_query_mae"] is not None and agree["other_areas_query_mae"]:
        print(f"  query MAE in the suggested areas {agree['suggested_areas_query_mae']:.2f} "
              f"({agree['suggested_areas_queries']} views) vs elsewhere "
              f"{agree['other_areas_query_mae']:.2f}")  # fmt: skip
    files = args.out / "map_report"
    subprocess.run([sys.executable, "-m", "cli.main", "map", "report", MAP_NAME, "--out",
                    str(files)], env={**os.environ, "FEATURELOC_MAPS_DIR": str(args.out / "maps")},
                   check=True)  # fmt: skip
    (args.out / "map_report.json").write_text(json.dumps(result, indent=1))
    print(f"written {args.out / 'map_report.json'} and {files}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
