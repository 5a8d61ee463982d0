"""A wider fine stage and its decision rule, fitted on the map's held-out positions.

The cascade's first fine stage (3 places x 1 view, switch at 40 fine inliers and a 1.5x lead)
was set beforehand and the map's fit turned it off (BENCHMARKS.md, "Coarse-to-fine"). This
script asks whether more views per place and a fitted rule gain (they did: core/finestage.py's
defaults now come from its run, BENCHMARKS.md section 8):

1. localise ``--heldout`` held-out pseudo-queries (core/heldout.py) and ``queries.csv`` with the
   fast profile; for those whose raw coarse confidence is below ``--fine-below``, run the fine
   stage on ``--places`` places x ``--views`` views and keep every fine-verified view (place,
   position, inliers), so any rule can be replayed offline;
2. on the held-out rows only, choose the escalation threshold, ``switch_inliers`` and
   ``switch_ratio`` that minimise the mean error (the answer: the coarse one, or the winning
   place's inlier-weighted position as ``core.finestage.place_estimate`` computes it);
3. report that rule on queries.csv (measured, never fitted), paired with the coarse answers.

    python -m bench.fine_rule --out /work/cache/v2 --places 5 --views 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from bench.accuracy import MAP_NAME, load_queries
from bench.getty_maps import GETTY, getty_image
from core import defaults
from core.evaluation import bootstrap_ci, hits, l1_error, map_centroid, score_result
from core.finestage import FineConf, FineMatch, decide, place_estimate, takes_over
from core.heldout import hidden_mask, sample_heldout
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapstore import MapStore
from core.registry import create_extractor


def collect(loc: Localiser, jobs, out: Path, fine_conf: dict, fine_below: float) -> list[dict]:
    """One row per (id, photo, truth, hidden row or None); cached in ``out`` (JSON lines)."""
    lines = out.read_text().splitlines() if out.is_file() else []
    rows = {r["id"]: r for r in map(json.loads, lines)}
    fast = LocaliseOptions.parse({"profile": "fast"})
    accurate = LocaliseOptions.parse(
        {"profile": "accurate", "fine_conf": {**fine_conf, "escalate_below": 1.0}}
    )
    centroid = map_centroid(loc.map.positions)
    with out.open("a") as f:
        for qid, path, truth, hidden_row in jobs:
            if qid in rows:
                continue
            t0 = time.perf_counter()
            image = read_image(path)
            hidden = None if hidden_row is None else hidden_mask(loc.map, hidden_row)
            res = loc.localise(image, fast, hidden, calibrated=False)
            coarse = score_result(qid, truth, res, 0.0, centroid)
            row = {
                "id": qid,
                "truth": truth,
                "coarse": (coarse.scored_x, coarse.scored_y),
                "score": float(res.estimate.confidence),
                # Uncalibrated, so this is the estimator's own call; a declined answer still
                # has x and y (its guess under doubt).
                "declined": not res.estimate.localised,
                # The coarse shortlist, to replay a declined query's guess with other weights
                # (core.estimation.doubt_position).
                "candidates": [
                    (c.retrieval_rank, c.retrieval_score, c.position, c.inliers)
                    for c in res.candidates
                ],
                "fine": None,
            }
            if res.estimate.confidence < fine_below:
                res = loc.localise(image, accurate, hidden, calibrated=False)
                row["fine"] = [
                    (c.retrieval_rank, c.position, c.inliers)
                    for c in res.candidates
                    if c.stage == "fine"
                ]
            row["seconds"] = time.perf_counter() - t0
            rows[qid] = row
            f.write(json.dumps(row) + "\n")
            f.flush()
    return [rows[j[0]] for j in jobs]


def answer(row: dict, below: float, switch_inliers: float, ratio: float) -> tuple[float, float]:
    """The answer the engine gives with this rule (``Localiser._refine``): the coarse one, or,
    when it escalates, the fine stage's place where ``core.finestage.takes_over`` says so,
    placed as ``place_estimate`` places it."""
    if not row["fine"] or row["score"] >= below:
        return tuple(row["coarse"])
    fine = [
        FineMatch(index=i, place=p, tentative=inl, inliers=inl, mean_score=0.0, seconds=0.0)
        for i, (p, _, inl) in enumerate(row["fine"])
    ]
    conf = FineConf.make({"switch_inliers": switch_inliers, "switch_ratio": ratio})
    decision = decide(max(m.place for m in fine) + 1, fine, conf)
    if decision.place is None or not takes_over(decision, not row.get("declined")):
        return tuple(row["coarse"])
    positions = np.array([xy for _, xy, _ in row["fine"]], np.float64)
    x, y, _ = place_estimate(decision.place, fine, positions)
    return x, y


def errors(rows: list[dict], rule: tuple[float, float, float]) -> np.ndarray:
    return np.array([l1_error(*answer(r, *rule), *r["truth"]) for r in rows], np.float64)


def describe(rule: tuple) -> str:
    below, inliers, ratio = rule
    return f"escalate below {below:.3f}, {inliers:.0f} inliers, {ratio}x lead"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--getty", type=Path, default=GETTY)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--places", type=int, default=5)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--fine-below", type=float, default=defaults.HELDOUT_FINE_BELOW)
    args = ap.parse_args(argv)
    store = MapStore(args.out / "maps")
    if store.open(MAP_NAME).fine_extractor is None:
        ident = create_extractor(defaults.FINE_EXTRACTOR, defaults.FINE_EXTRACTOR_CONF).identity()
        store.set_fine_extractor(MAP_NAME, ident)
    ref_map = store.open(MAP_NAME)
    image_of = getty_image(args.getty)
    loc = Localiser(ref_map, fine_source=image_of)  # fine features extracted as needed
    fine_conf = {"places": args.places, "views": args.views}
    tag = f"{args.places}x{args.views}"
    t0 = time.perf_counter()
    held = [
        (ref_map.ids[r], image_of(ref_map.ids[r]),
         (float(ref_map.positions[r, 0]), float(ref_map.positions[r, 1])), r)
        for r in sample_heldout(ref_map, args.heldout, seed=0)
    ]  # fmt: skip
    held_rows = collect(
        loc, held, args.out / f"fine-heldout-{tag}.jsonl", fine_conf, args.fine_below
    )
    print(f"held-out done in {time.perf_counter() - t0:.0f} s", flush=True)
    queries = [(q, p, (x, y), None) for q, p, x, y in load_queries(args.getty)]
    query_rows = collect(
        loc, queries, args.out / f"fine-queries-{tag}.jsonl", fine_conf, args.fine_below
    )
    print(f"all done in {time.perf_counter() - t0:.0f} s")

    coarse = (0.0, 0.0, 0.0)  # never escalates
    scores = sorted({r["score"] + 1e-9 for r in held_rows if r["fine"]})
    grid = itertools.product(
        [0.0, *scores], (20.0, 30.0, 40.0, 60.0, 80.0), (1.0, 1.25, 1.5, 2.0, 3.0)
    )
    fits = sorted((errors(held_rows, rule).mean(), rule) for rule in grid)
    base_h = errors(held_rows, coarse).mean()
    best_mae, rule = fits[0]
    print(f"{tag}: held-out ({len(held_rows)}, {sum(bool(r['fine']) for r in held_rows)} with "
          f"the fine stage): coarse MAE {base_h:.2f}; best rule ({describe(rule)}) MAE "
          f"{best_mae:.2f}")  # fmt: skip
    for mae, r in fits[:5]:
        print(f"  {describe(r)}: held-out MAE {mae:.2f}")
    engine = FineConf()
    default_rule = (args.fine_below, engine.switch_inliers, engine.switch_ratio)
    print(f"  the engine's switch on every escalated row: held-out MAE "
          f"{errors(held_rows, default_rule).mean():.2f}")  # fmt: skip
    base_q = errors(query_rows, coarse)
    for label, r in (("fitted rule", rule), ("engine's switch", default_rule)):
        ours = errors(query_rows, r)
        lo, hi = bootstrap_ci(ours - base_q)
        print(f"queries.csv ({len(query_rows)}), {label}: coarse MAE {base_q.mean():.2f} -> "
              f"{ours.mean():.2f} (difference {(ours - base_q).mean():+.2f}, 95 % {lo:+.2f} to "
              f"{hi:+.2f}), median {np.median(ours):.2f}, "
              f"within 5 {hits(ours).mean():.0%}")  # fmt: skip
    print(f"s per escalated query: {np.mean([r['seconds'] for r in held_rows if r['fine']]):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
