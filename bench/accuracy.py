"""Accuracy benchmark on the Getty set: queries.csv against a map of references.csv.

Reproduce (from the repository root, venv active; the first run builds the map, ~5-10 min):

    python -m bench.accuracy                      # every configuration, every query (~35 min)
    python -m bench.accuracy --exhaustive-queries 15    # the original method on 15 queries only
    python -m bench.accuracy --configs default --limit 30
    python -m bench.accuracy --configs default --queries queries_allviews.csv   # all 750 views

Prints one table row per configuration (MAE with its bootstrap 95 % interval, median, p90,
within 5, recall@K, pairs matched per query, wall and CPU seconds per query in-process with
the map loaded, peak memory) and writes ``<out>/accuracy.json`` with per-query rows. Maps are
cached under ``<out>/maps`` (default bench/out, git-ignored). Peak memory is the process's
peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so it only grows from
one row to the next: the map, the models and the largest configuration so far. Skips when
../shared/getty is absent.

"original" is the published method with our best affordable matcher: XFeat + mutual NN against
every reference (batched, no verification), position of the reference with the most raw
matches. It matches 3000 pairs per query (~10 s each on 2 cores); ``--exhaustive-queries`` runs
it on fewer queries, and its row says how many.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.getty_maps import GETTY, ensure_fine_and_training, ensure_map, getty_image
from core import defaults
from core.evaluation import RECALL_KS, EvaluationReport, bootstrap_ci, evaluate, hits
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser

MAP_NAME = "getty-xfeat"

CONFIGS: dict[str, dict] = {
    "default": {},
    # The coarse-to-fine cascade (core/finestage.py) with the map's fitted escalation rule.
    "accurate": {"profile": "accurate"},
    # The fine stage for every query (escalation threshold 1): what a GPU can afford.
    "accurate-all": {"profile": "accurate", "fine_conf": {"escalate_below": 1.0}},
    "top20-cluster": {"top_k": 20},
    "top50-best": {"estimator": "best", "verify_threshold_px": 1.0},
    "top50-most-matches": {"estimator": "most_matches"},
    "original": {"top_k": None, "estimator": "most_matches", "verify": False},
}


def load_queries(
    getty: Path, csv_name: str = "queries.csv"
) -> list[tuple[str, Path, float, float]]:
    with (getty / csv_name).open(newline="") as f:
        return [
            (r["id"], getty / "images" / f"{r['id']}.jpg", float(r["x"]), float(r["y"]))
            for r in csv.DictReader(f)
        ]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def retrieval_recall(loc: Localiser, queries, depth: int = max(RECALL_KS)) -> dict:
    """Shortlist positions per query (for recall@K beyond the pairs a configuration matched)."""
    lists = {}
    for qid, path, _, _ in queries:
        feats = loc.extractor.extract(read_image(path))
        order, _ = loc.retriever.shortlist(feats, loc.map, depth)
        lists[qid] = loc.map.positions[order]
    return lists


def run_config(loc, name, options, queries, shortlists, log) -> EvaluationReport:
    opts = LocaliseOptions.parse(options)
    loc.localise(read_image(queries[0][1]), opts)  # warm-up: lazy model and matcher set-up
    cpu0 = time.process_time()
    stages: dict[str, list[float]] = {}

    def localise(path):
        res = loc.localise(read_image(path), opts)
        for k, v in res.timings.items():
            stages.setdefault(k, []).append(v)
        return res

    report = evaluate(
        localise,
        queries,
        fallback_position=tuple(loc.map.positions.mean(axis=0)),
        shortlists=shortlists,
        config={"name": name, "options": opts.model_dump()},
    )
    report.summary["peak_rss_mib"] = peak_rss_mib()
    # Mean seconds per stage over the queries that ran it (the fine stage: escalated ones).
    report.summary["stage_seconds"] = {k: float(np.mean(v)) for k, v in stages.items()}
    # CPU seconds (all threads) per query: comparable across runs when others load the box.
    report.summary["cpu_seconds_per_query"] = (time.process_time() - cpu0) / len(queries)
    log(format_row(name, report.summary))
    log(
        "    stages (s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in report.summary["stage_seconds"].items())
    )
    return report


HEADER = (
    f"{'configuration':22s} {'n':>4s} {'MAE':>6s} {'95% int.':>11s} {'median':>6s} "
    f"{'p90':>6s} {'<5':>5s} "
    f"{'R@1':>5s} {'R@5':>5s} {'R@20':>5s} {'R@50':>5s} {'pairs':>6s} "
    f"{'s/q':>5s} {'p95':>5s} {'cpu/q':>5s} {'esc':>5s} {'notloc':>6s} {'ECE':>5s} "
    f"{'<5|c>.5':>7s} {'MiB':>6s}"
)


def format_row(name: str, s: dict) -> str:
    def r(k):
        v = s.get(f"recall@{k}")
        return f"{v:5.2f}" if v is not None else f"{'-':>5s}"

    sure = s.get("within_5_confident")
    return (
        f"{name:22s} {s['queries']:4d} {s['mae']:6.2f} "
        f"{s['mae_ci95'][0]:5.1f}-{s['mae_ci95'][1]:<5.1f} {s['median']:6.2f} {s['p90']:6.2f} "
        f"{s['within_5']:5.2f} {r(1)} {r(5)} {r(20)} {r(50)} "
        f"{s['candidates_per_query']:6.0f} {s['seconds_per_query']:5.2f} "
        f"{s['seconds_p95']:5.2f} {s['cpu_seconds_per_query']:5.2f} {s['escalated']:5.2f} "
        f"{s['not_localised']:6d} {s['ece_within_5']:5.3f} "
        f"{'-' if sure is None else f'{sure:.2f}':>7s} {s['peak_rss_mib']:6.0f}"
    )


def compare(name: str, ours: EvaluationReport, base: EvaluationReport, base_name: str) -> str:
    """Paired on the same queries (noise largely cancels): MAE and within-5 differences with
    bootstrap 95 % intervals."""
    theirs = {r.id: r.error for r in base.rows}
    a, b = np.array([(r.error, theirs[r.id]) for r in ours.rows if r.id in theirs]).T
    lo, hi = bootstrap_ci(a - b)
    gained = hits(a).astype(float) - hits(b).astype(float)
    hlo, hhi = bootstrap_ci(gained)
    return (
        f"{name} vs {base_name} on the same {len(a)} queries: MAE {a.mean():.2f} vs "
        f"{b.mean():.2f}, difference {(a - b).mean():+.2f} (95 % {lo:+.2f} to {hi:+.2f}); "
        f"within 5 {hits(a).mean():.0%} vs {hits(b).mean():.0%}, difference {gained.mean():+.0%} "
        f"(95 % {hlo:+.0%} to {hhi:+.0%})"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--getty", type=Path, default=GETTY)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    ap.add_argument(
        "--queries",
        default="queries.csv",
        help="query list in the Getty folder: queries.csv (150 positions, one view each) or "
        "queries_allviews.csv (all 5 views of those positions)",
    )
    ap.add_argument("--limit", type=int, default=None, help="only the first N queries")
    ap.add_argument(
        "--exhaustive-queries",
        type=int,
        default=None,
        help="run the exhaustive original method on this many queries (evenly spaced); "
        "default: all of them",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads (this box: 2 cores)")
    ap.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the models run: map build, fit and queries (default: cuda when present)",
    )
    args = ap.parse_args(argv)
    if not (args.getty / args.queries).is_file():
        print(f"skipped: {args.getty / args.queries} not found")
        return 0
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    store, build = ensure_map(
        args.out, MAP_NAME, defaults.EXTRACTOR, defaults.RETRIEVER, getty=args.getty,
        device=args.device,
    )  # fmt: skip
    print(
        f"map {MAP_NAME}: {build['references']} references, built in {build['seconds']:.0f} s "
        f"= {build['ms_per_reference']:.0f} ms/reference (extraction + VLAD fit)"
    )
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    image_of = getty_image(args.getty)
    fine: dict = {}
    if any(CONFIGS[n].get("profile") == "accurate" for n in names):
        fine = ensure_fine_and_training(store, MAP_NAME, image_of, print, args.device)
    t0 = time.perf_counter()
    loc = Localiser(store.open(MAP_NAME), args.device, fine_source=image_of)
    print(f"map loaded in {time.perf_counter() - t0:.1f} s; peak RSS {peak_rss_mib():.0f} MiB")

    queries = load_queries(args.getty, args.queries)[: args.limit]
    shortlists = retrieval_recall(loc, queries)
    results = {}
    print(HEADER)
    for name in names:
        qs = queries
        if name == "original":
            n = args.exhaustive_queries or len(queries)
            qs = queries[:: max(1, len(queries) // max(n, 1))][:n]
        results[name] = run_config(loc, name, CONFIGS[name], qs, shortlists, print)
    if "default" in results:
        for name, report in results.items():
            if name != "default":
                print(compare(name, report, results["default"], "default"))
    out = args.out / "accuracy.json"
    out.write_text(
        json.dumps(
            {
                "build": build,
                "fine": fine,
                "threads": args.threads,
                "results": {k: json.loads(v.to_json()) for k, v in results.items()},
            },
            indent=1,
        )
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
