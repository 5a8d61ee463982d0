"""Accuracy of a localiser on queries with known positions.

    report = evaluate(
        lambda path: localiser.localise(read_image(path), options),
        queries,
        fallback_position=map_centroid(localiser.map.positions),
    )
    print(report.summary["mae"]); Path("report.json").write_text(report.to_json())

Error is the competition's metric, ``|dx| + |dy|``. A query the localiser declines ("not
localised") still counts, against a fallback so that declining cannot hide errors:

1. the estimate's own (x, y) when the estimator gave one;
2. else the position of the candidate with the most inliers (what "best match" would answer);
3. else ``fallback_position``: the map's centroid (:func:`map_centroid`), whether the answer
   came from an in-process localiser or through the queue.

Recall@K (a reference within ``recall_radius`` of the truth among the first K candidates by
retrieval rank) is computed from the candidates a result carries, so only for K up to the number
of candidates matched; pass ``shortlists`` to measure it on longer retrieval lists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.calibration import LOCALISED_PROBABILITY, expected_calibration_error
from core.types import CandidateResult, LocalisationResult

Query = tuple[str, Path | str, float, float]  # (id, image path, x, y)
LocaliserFn = Callable[[Path], LocalisationResult]

# An answer strictly within this L1 error of the truth is a hit: the "within 5" of every report,
# the radius of recall@K, and what a calibrated confidence is the probability of.
HIT_RADIUS = 5.0
WITHIN = (1.0, 2.0, HIT_RADIUS, 10.0)
RECALL_KS = (1, 5, 10, 20, 30, 50)


@dataclass
class QueryRow:
    id: str
    truth_x: float
    truth_y: float
    x: float | None  # the estimate; None when not localised and nothing to fall back on
    y: float | None
    scored_x: float  # the position the error was computed at (estimate or fallback)
    scored_y: float
    error: float  # |dx| + |dy| at the scored position
    confidence: float
    localised: bool
    fallback: str  # "" (the estimate itself), "estimate", "best_candidate" or "map"
    candidates: int  # pairs matched for this query
    seconds: float
    nearest_rank: int | None  # first retrieval rank with a reference within recall_radius
    ranks_checked: int  # how deep the ranked list behind nearest_rank went
    method: str = ""  # how the estimate was made (Estimate.method)
    escalated: bool = False  # the fine stage re-verified this query (core/finestage.py)


@dataclass
class EvaluationReport:
    rows: list[QueryRow]
    summary: dict[str, float | int | None]
    config: dict = field(default_factory=dict)

    def to_json(self, indent: int | None = 2) -> str:
        rows = [asdict(r) for r in self.rows]
        return json.dumps(
            {"config": self.config, "summary": self.summary, "rows": rows}, indent=indent
        )


def l1_error(x: float, y: float, tx: float, ty: float) -> float:
    return abs(x - tx) + abs(y - ty)


def hits(errors: Sequence[float] | np.ndarray) -> np.ndarray:
    """Which errors are hits (strictly within ``HIT_RADIUS``)."""
    return np.asarray(errors, np.float64) < HIT_RADIUS


def first_rank_within(
    ranked_positions: np.ndarray, truth: tuple[float, float], radius: float
) -> int | None:
    """The first index of ``ranked_positions`` (K, 2) within L1 ``radius`` of the truth."""
    if len(ranked_positions) == 0:
        return None
    d = np.abs(np.asarray(ranked_positions, np.float64) - np.asarray(truth)).sum(1)
    hits = np.flatnonzero(d < radius)
    return int(hits[0]) if len(hits) else None


def map_centroid(positions: Sequence[tuple[float, float]] | np.ndarray) -> tuple[float, float]:
    """Where a query with neither an estimate nor a candidate is scored: the mean of the map's
    reference positions (the least-committal answer; (0, 0) may lie far outside the map)."""
    pos = np.asarray(positions, np.float64).reshape(-1, 2)
    if len(pos) == 0:
        raise ValueError("a map without references has no centroid")
    x, y = pos.mean(axis=0)
    return float(x), float(y)


def score_result(
    query_id: str,
    truth: tuple[float, float],
    result: LocalisationResult,
    seconds: float,
    fallback_position: tuple[float, float],
    recall_radius: float = HIT_RADIUS,
) -> QueryRow:
    est = result.estimate
    if est.x is not None and est.y is not None:
        sx, sy, how = est.x, est.y, "" if est.localised else "estimate"
    elif result.candidates:
        best = best_candidate(result.candidates)
        sx, sy, how = best.position[0], best.position[1], "best_candidate"
    else:
        sx, sy, how = fallback_position[0], fallback_position[1], "map"
    coarse = [c for c in result.candidates if c.stage == "coarse"]
    by_rank = sorted(coarse, key=lambda c: c.retrieval_rank)
    rank = first_rank_within(np.array([c.position for c in by_rank]), truth, recall_radius)
    return QueryRow(
        id=query_id,
        truth_x=truth[0],
        truth_y=truth[1],
        x=est.x,
        y=est.y,
        scored_x=float(sx),
        scored_y=float(sy),
        error=l1_error(sx, sy, *truth),
        confidence=float(est.confidence),
        localised=bool(est.localised),
        fallback=how,
        candidates=len(result.candidates),
        seconds=seconds,
        nearest_rank=None if rank is None else by_rank[rank].retrieval_rank,
        ranks_checked=len(by_rank),
        method=est.method,
        escalated=len(coarse) < len(result.candidates),
    )


def best_candidate(candidates: Sequence[CandidateResult]) -> CandidateResult:
    return max(candidates, key=lambda c: (c.inliers, c.tentative_matches))


def evaluate(
    localiser_fn: LocaliserFn,
    queries: Sequence[Query],
    fallback_position: tuple[float, float],
    recall_radius: float = HIT_RADIUS,
    shortlists: dict[str, np.ndarray] | None = None,
    config: dict | None = None,
    on_row: Callable[[QueryRow], None] | None = None,
) -> EvaluationReport:
    """Run ``localiser_fn(image_path)`` on every query and score it.

    ``shortlists`` (optional): query id -> positions (K, 2) of the retrieval list, best first,
    to report recall@K beyond the candidates actually matched.
    """
    rows = []
    for qid, path, tx, ty in queries:
        t0 = time.perf_counter()
        result = localiser_fn(Path(path))
        seconds = time.perf_counter() - t0
        row = score_result(qid, (tx, ty), result, seconds, fallback_position, recall_radius)
        if shortlists is not None and qid in shortlists:
            row.nearest_rank = first_rank_within(shortlists[qid], (tx, ty), recall_radius)
            row.ranks_checked = len(shortlists[qid])
        rows.append(row)
        if on_row:
            on_row(row)
    return EvaluationReport(rows, summarise(rows, recall_radius), dict(config or {}))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``.

    Errors here are heavy-tailed (one wrong place costs 100+ units), so on a few hundred
    queries the MAE moves by whole units with the sample: report it with its interval. Pass
    per-query differences of two configurations on the same queries for a paired comparison.
    """
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        raise ValueError("no values")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (resamples, len(v)))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def summarise(rows: Sequence[QueryRow], recall_radius: float = HIT_RADIUS) -> dict:
    """MAE (with its bootstrap 95 % interval), median, p90, fraction within 1/2/5/10 (strictly
    less), recall@K, confidence calibration (MAE of the most confident 50 % / 80 %), seconds
    per query."""
    if not rows:
        return {"queries": 0}
    err = np.array([r.error for r in rows])
    conf = np.array([r.confidence for r in rows])
    out: dict[str, float | int | list[float] | list[tuple[float, float, int]] | None] = {
        "queries": len(rows),
        "mae": float(err.mean()),
        "mae_ci95": list(bootstrap_ci(err)),
        "median": float(np.median(err)),
        "p90": float(np.percentile(err, 90)),
    }
    for t in WITHIN:
        out[f"within_{t:g}"] = float((err < t).mean())
    out["not_localised"] = int(sum(not r.localised for r in rows))
    out["mae_localised"] = (
        float(np.mean([r.error for r in rows if r.localised]))
        if any(r.localised for r in rows)
        else None
    )
    order = np.argsort(-conf, kind="stable")
    for frac in (0.5, 0.8):
        top = order[: max(1, int(round(frac * len(rows))))]
        out[f"mae_top{int(frac * 100)}_confident"] = float(err[top].mean())
    # Is the confidence a probability of being within 5? (calibrated maps: core/heldout.py)
    hit = hits(err)
    out["ece_within_5"], out["reliability"] = expected_calibration_error(conf, hit)
    sure = conf >= LOCALISED_PROBABILITY  # what a calibrated map calls localised
    out["confident_share"] = float(sure.mean())
    out["within_5_confident"] = float(hit[sure].mean()) if sure.any() else None
    out["escalated"] = float(np.mean([r.escalated for r in rows]))
    out["candidates_per_query"] = float(np.mean([r.candidates for r in rows]))
    out["seconds_per_query"] = float(np.mean([r.seconds for r in rows]))
    out["seconds_p95"] = float(np.percentile([r.seconds for r in rows], 95))
    # Recall@K only up to the depth every query's ranked list was checked to.
    depth = min(r.ranks_checked for r in rows)
    for k in RECALL_KS:
        if k <= depth:
            out[f"recall@{k}"] = float(
                np.mean([r.nearest_rank is not None and r.nearest_rank < k for r in rows])
            )
    out["recall_radius"] = recall_radius
    return out
