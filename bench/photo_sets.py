"""Photo sets on the Getty set (issue 25): sets of 1, 2, 3 and 5 views of one query position,
drawn reproducibly from queries_allviews.csv grouped by position, scored once at the shared
truth.

Reproduce (repository root, venv active; the map is built on first use, bench/getty_maps.py):

    python -m bench.photo_sets                  # all 150 positions (750 single localisations)
    python -m bench.photo_sets --positions 40   # a reproducible subset of positions
    python -m bench.photo_sets --positions 40 --complement   # the other 110
    python -m bench.photo_sets --heldout 40     # 40 of the map's own positions, each hidden

The held-out run (the map's own positions, all views of one hidden while they are the queries,
core/heldout.py) is where the pooling's rule is judged; the query positions only measure. Each
row also scores the pooled estimator's own answer ("pooled-only": the place's evidence-weighted
reference position, without the photos' placed answers), the alternative rule, and whether an
agreeing photo's answer was placed between references (core/placement.py) rather than copied
from a reference. ``--reuse`` re-scores the sets from the single-photo results a run saved for
the same map fit (the pooling only: seconds, for trying a pooling rule).

Each view is localised once with the default options (as a single-photo job would be, map
calibration included); a set's answer is core.photoset.pool_photos over its views' results,
exactly what core.photoset.localise_set computes after running the same per-photo pipeline,
so every set size is paired on the same positions and views. A set's time is the sum of its
views' single-photo times plus the pooling. The views of a set of k are drawn per position by
a seeded generator (``--seed``). The yaws of a set are its views' index steps times
``VIEW_STEP_DEG`` (Getty's views are about 72 degrees apart; the sign, the way the views turn
in the map's sense, was read off the map's own held-out positions: the "view step" line each
run prints), passed with the set as a job passes them (they give the set's heading and do not
move its position, core/photoset.py).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import pickle
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from bench.common import machine_info, write_json
from bench.getty_maps import GETTY, ensure_map
from core.angles import wrap
from core.calibration import calibrate, expected_calibration_error
from core.estimation import ESTIMATORS
from core.evaluation import bootstrap_ci, l1_error
from core.heldout import hidden_mask, sample_heldout
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.photoset import pool_photos
from core.positions import position_key
from core.types import LocalisationResult

MAP_NAME = "getty-xfeat"
SIZES = (1, 2, 3, 5)
# Getty's views of one position are about 72 degrees apart (its README); on the map's own
# held-out positions a view's placed heading is the previous view's minus about 72 degrees
# in the map's sense (the "view step" line of `--heldout` runs, BENCHMARKS.md section 23).
VIEW_STEP_DEG = -72.0
PLACED = ("+placement", "+pose")  # estimate methods of an answer placed between references


def positions_of(getty: Path) -> list[tuple[tuple[float, float], list[str]]]:
    """(truth, view ids in file order) per position of queries_allviews.csv, in file order."""
    groups: dict[tuple[float, float], list[str]] = defaultdict(list)
    with (getty / "queries_allviews.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            groups[position_key(float(r["x"]), float(r["y"]))].append(r["id"])
    return list(groups.items())


def draw(views: int, size: int, seed: int, position: int) -> list[int]:
    """The views of one set: the same for a (seed, position, size) on every run."""
    rng = np.random.default_rng([seed, position, size])
    return sorted(rng.choice(views, size, replace=False).tolist())


Spot = tuple[tuple[float, float], list[str], np.ndarray | None]  # truth, view ids, hidden


def query_spots(getty: Path, n: int | None, seed: int, complement: bool = False) -> list[Spot]:
    """queries_allviews.csv grouped by position (a seeded subset of ``n``, or with
    ``complement`` the positions that subset leaves out: two runs then cover them all)."""
    groups = positions_of(getty)
    if n is not None and n < len(groups):
        pick = set(np.random.default_rng(seed).choice(len(groups), n, replace=False).tolist())
        keep = [i for i in range(len(groups)) if (i in pick) != complement]
        groups = [groups[i] for i in keep]
    return [(truth, ids, None) for truth, ids in groups]


def heldout_spots(loc: Localiser, n: int, seed: int) -> list[Spot]:
    """``n`` reference positions of the map, each with all its views and hidden while they are
    the queries (core/heldout.py): where the pooling is judged without the test queries."""
    spots = []
    for row in sample_heldout(loc.map, n, seed):
        hidden = hidden_mask(loc.map, row)
        ids = [loc.map.ids[i] for i in np.flatnonzero(hidden)]
        truth = (float(loc.map.positions[row, 0]), float(loc.map.positions[row, 1]))
        spots.append((truth, sorted(ids), hidden))
    return spots


def set_calibration(training: dict, rows: dict[int, list[dict]]) -> dict:
    """How well each of the map's curves calibrates the sets' confidence (sets of 2 or more):
    the expected calibration error and the mean confidence against the hit rate, through the
    single-photo curve and, where the map measured sets (core/setfit.py), the set curve."""
    curves = training.get("calibration", {})
    out: dict = {}
    for name in ("coarse", "set"):
        if name not in curves:
            continue
        for k in SIZES[1:]:
            p = np.array([calibrate(curves[name], r["confidence"]) for r in rows[k]])
            hit = np.array([r["error"] < 5 for r in rows[k]], np.float64)
            ece, _ = expected_calibration_error(p, hit)
            out[f"{name}_curve_sets_of_{k}"] = {
                "ece": ece,
                "mean_confidence": float(p.mean()),
                "hit_rate": float(hit.mean()),
            }
            print(f"sets of {k} through the {name} curve: ECE {ece:.3f}, mean confidence "
                  f"{p.mean():.2f}, hit rate {hit.mean():.2f}")  # fmt: skip
    return out


def view_steps(steps: list[float]) -> dict:
    """How the placed headings of a position's consecutive views turn (degrees): the share
    within 20 degrees of +72 and of -72, the median of each group, and how far the steps lie
    from ``VIEW_STEP_DEG`` (percentiles 50, 75, 90): the scatter of placement's headings and
    of the views' own steps together."""
    a = np.array(steps)
    off = np.abs((a - VIEW_STEP_DEG + 180) % 360 - 180)
    out: dict = {"pairs": len(a), "off_p50_p75_p90": np.percentile(off, [50, 75, 90]).tolist()}
    for sign in (1, -1):
        near = a[np.abs(((a - sign * 72.0) + 180) % 360 - 180) <= 20]
        out[f"{sign * 72:+d}"] = {
            "share": float(len(near) / max(len(a), 1)),
            "median": float(np.median(near)) if len(near) else None,
        }
    print(f"view step: {len(a)} pairs of consecutive placed views; "
          + ", ".join(f"{k}: {v['share']:.0%} (median {v['median']})" for k, v in out.items()
                      if k.startswith(("+", "-")))
          + f"; off {VIEW_STEP_DEG:+.0f} by {np.round(out['off_p50_p75_p90'], 1)} "
          "(p50/75/90)")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--positions", type=int, default=None, help="a seeded subset of positions")
    ap.add_argument(
        "--heldout", type=int, default=None, help="N of the map's own positions, hidden, instead"
    )
    ap.add_argument(
        "--complement", action="store_true", help="the positions --positions N leaves out"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the single-photo results an earlier run with the same map fit saved "
        "(bench/out/photo_sets_singles_*.pkl): re-scores the pooling only",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    store, _ = ensure_map(args.out, MAP_NAME, "xfeat", "vlad")
    loc = Localiser(store.open(MAP_NAME))
    opts = LocaliseOptions()
    spots = (
        heldout_spots(loc, args.heldout, args.seed)
        if args.heldout
        else query_spots(GETTY, args.positions, args.seed, args.complement)
    )
    centroid = tuple(loc.map.positions.mean(axis=0))
    loc.localise(read_image(GETTY / "images" / f"{spots[0][1][0]}.jpg"), opts)  # warm-up

    rows: dict[int, list[dict]] = {k: [] for k in SIZES}
    steps: list[float] = []  # degrees from one placed view to the next of its position
    singles_path = args.out / (
        f"photo_sets_singles_{'heldout' if args.heldout else 'queries'}_{loc.map.fit[1]}.pkl"
    )
    saved: dict[tuple[str, bool], tuple[LocalisationResult, float]] = (
        pickle.loads(singles_path.read_bytes()) if args.reuse and singles_path.is_file() else {}
    )
    t_start = time.perf_counter()
    for n, (truth, ids, hidden) in enumerate(spots):
        single: list[tuple[LocalisationResult, float]] = []
        for rid in ids:
            key = (rid, hidden is not None)
            if key not in saved:
                t0 = time.perf_counter()
                image = read_image(GETTY / "images" / f"{rid}.jpg")
                res = loc.localise(image, opts, hidden)
                # The pooling reads estimates and candidates, not the inlier coordinates.
                saved[key] = (dataclasses.replace(res, inliers=[]), time.perf_counter() - t0)
            single.append(saved[key])
        headings = [r.estimate.heading for r, _ in single]
        steps += [
            math.degrees(wrap(b - a))
            for a, b in zip(headings, headings[1:], strict=False)
            if a is not None and b is not None
        ]
        for k in SIZES:
            chosen = draw(len(ids), k, args.seed, n)
            yaws = [(i - chosen[0]) * VIEW_STEP_DEG for i in chosen]
            # The pooled estimator's own answer, before the photos' answers place the set:
            # the alternative rule the held-out run compares with.
            pooled_only = ESTIMATORS[opts.estimator](
                [c for i in chosen for c in single[i][0].candidates if c.stage == "coarse"],
                opts.estimator_config(),
            )
            if k == 1:
                est, seconds = single[chosen[0]][0].estimate, single[chosen[0]][1]
                reason, placed = None, est.method.endswith(PLACED)
            else:
                t0 = time.perf_counter()
                pooled = pool_photos([single[i][0] for i in chosen], opts, yaws)
                est, reason = pooled.estimate, pooled.reason
                seconds = sum(single[i][1] for i in chosen) + time.perf_counter() - t0
                # A set is placed where a photo placed between references gave its answer.
                placed = any(
                    single[chosen[i]][0].estimate.method.endswith(PLACED) for i in pooled.agreeing
                )
            x, y = (est.x, est.y) if est.x is not None and est.y is not None else centroid
            px, py = (
                (pooled_only.x, pooled_only.y)
                if pooled_only.x is not None and pooled_only.y is not None
                else centroid
            )
            rows[k].append(
                {
                    "views": [ids[i] for i in chosen],
                    "yaws": yaws,
                    "truth": truth,
                    "x": x,
                    "y": y,
                    "error": l1_error(x, y, *truth),
                    "pooled_only_error": l1_error(px, py, *truth),
                    "placed": placed,
                    "localised": est.localised,
                    # Raw for a set (pool_photos calibrates nothing), calibrated for one photo.
                    "confidence": float(est.confidence),
                    "method": est.method,
                    "reason": reason,
                    "seconds": seconds,
                }
            )
        if n + 1 == len(spots) or (n + 1) % 10 == 0:
            singles_path.write_bytes(pickle.dumps(saved))
        mae = {k: np.mean([r["error"] for r in rows[k]]) for k in SIZES}
        print(
            f"{n + 1}/{len(spots)} positions, {time.perf_counter() - t_start:.0f} s: MAE "
            + ", ".join(f"sets of {k} {mae[k]:.2f}" for k in SIZES),
            flush=True,
        )

    summary = {}
    print(f"\n{'set size':>8s} {'n':>4s} {'MAE':>6s} {'median':>6s} {'<5':>5s} {'notloc':>6s} "
          f"{'s/set':>6s} {'pooled-only MAE':>15s} {'placed':>6s}")  # fmt: skip
    for k in SIZES:
        err = np.array([r["error"] for r in rows[k]])
        alt = np.array([r["pooled_only_error"] for r in rows[k]])
        secs = np.array([r["seconds"] for r in rows[k]])
        s = {
            "sets": len(err),
            "mae": float(err.mean()),
            "mae_ci95": list(bootstrap_ci(err)),
            "median": float(np.median(err)),
            "within_5": float((err < 5).mean()),
            "not_localised": int(sum(not r["localised"] for r in rows[k])),
            "seconds_per_set": float(secs.mean()),
            "pooled_only_mae": float(alt.mean()),
            "pooled_only_within_5": float((alt < 5).mean()),
            "placed": float(np.mean([r["placed"] for r in rows[k]])),
        }
        summary[f"sets_of_{k}"] = s
        print(
            f"{k:8d} {s['sets']:4d} {s['mae']:6.2f} {s['median']:6.2f} {s['within_5']:5.2f} "
            f"{s['not_localised']:6d} {s['seconds_per_set']:6.2f} {s['pooled_only_mae']:15.2f} "
            f"{s['placed']:6.2f}"
        )
    summary["view_steps"] = view_steps(steps)
    summary["set_calibration"] = set_calibration(loc.map.training, rows)
    name = (
        f"photo_sets_heldout{args.heldout}.json"
        if args.heldout
        else f"photo_sets{'_complement' if args.complement else ''}.json"
    )
    path = write_json(
        args.out,
        name,
        {
            "machine": machine_info(),
            "map": MAP_NAME,
            "options": opts.model_dump(),
            "spots": "heldout references" if args.heldout else "queries_allviews.csv",
            "positions": len(spots),
            "seed": args.seed,
            "summary": summary,
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
