"""The map measures itself: views of held-out positions localised against the rest of the map.

A map is labelled data. Hide every view of one reference position, localise one of those views
against the remaining references, and the error is known. Such pseudo-queries behave like the
photos users send (on the Getty set their MAE, median and share within 5 are close to those of
the real query set), so the map's own escalation rule, confidence calibration and "not
localised" threshold are fitted on them (:func:`fit`) — never on anyone's test queries.

The run is resumable: each pseudo-query's row is appended to a JSON-lines file as soon as it is
done, and a restarted run skips the rows already there. :func:`fit` turns the rows into the
map's training record (``training.json`` in the map folder, read by ``ReferenceMap.training``).

Each pseudo-query is localised twice when its coarse answer is in doubt: with the fast profile
(the coarse stage alone) and with the fine stage forced on, so the fit can weigh every possible
escalation threshold against the same queries. A map without a fine set is fitted without a fine
part (no threshold, no fine curve: the accurate profile then uses its defaults); once it has
one, the rows measured without it are measured again for the fine stage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import LOCALISED_PROBABILITY, isotonic
from core.defaults import HELDOUT_FINE_BELOW, HELDOUT_QUERIES
from core.evaluation import hits, l1_error, map_centroid, score_result
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapstore import MapStore, ReferenceMap, write_training
from core.positions import at_position, position_groups

HELDOUT_FILE = "heldout.jsonl"  # in the map folder: one row per pseudo-query done


@dataclass
class HeldoutRow:
    """One pseudo-query: its truth, where each profile's answer is scored (the estimate, a
    declined one's guess included, else its best candidate), and each profile's raw
    confidence."""

    reference_id: str
    truth_x: float
    truth_y: float
    coarse_x: float | None
    coarse_y: float | None
    coarse_score: float  # the coarse stage's raw confidence
    fine_x: float | None = None  # the fine stage's answer, when it ran
    fine_y: float | None = None
    fine_score: float | None = None
    fine_switched: bool | None = None
    seconds: float = 0.0
    # The fine stage was tried (it may find no view with fine features); rows written before
    # this field count as tried when they hold a fine answer.
    fine_tried: bool = False

    def needs_fine(self, fine_below: float) -> bool:
        """Measured without the fine stage although its coarse answer is in doubt: a row from
        before the map had a fine set."""
        return not self.fine_tried and self.fine_score is None and self.coarse_score < fine_below

    def error(self, x: float | None, y: float | None, fallback: tuple[float, float]) -> float:
        if x is None or y is None:
            x, y = fallback
        return l1_error(x, y, self.truth_x, self.truth_y)


def sample_heldout(ref_map: ReferenceMap, n: int, seed: int = 0) -> list[int]:
    """Map rows of one view at each of ``n`` distinct positions (all positions if fewer),
    chosen reproducibly from ``seed``."""
    groups = position_groups(ref_map.positions)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(int(groups.max()) + 1 if len(groups) else 0)[:n]
    return [int(rng.choice(np.flatnonzero(groups == g))) for g in chosen]


def hidden_mask(ref_map: ReferenceMap, row: int) -> np.ndarray:
    """Every reference at the position of ``row``: hidden while that view is the query."""
    return at_position(ref_map.positions, ref_map.positions[row])


def run_heldout(
    localiser: Localiser,
    rows: Iterable[int],
    image_of: Callable[[str], Path],
    out: Path,
    options: dict[str, Any] | None = None,
    fine_below: float = 1.0,
    on_done: Callable[[HeldoutRow], None] | None = None,
) -> list[HeldoutRow]:
    """Localise the views ``rows`` with their positions hidden; rows are appended to ``out``
    (JSON lines), and rows already there are not run again. The fine stage runs on those whose
    coarse confidence is below ``fine_below`` (when the map has a fine feature set), also on
    rows already there that were measured without it (their coarse answer is kept)."""
    ref_map = localiser.map
    has_fine = ref_map.fine_extractor is not None
    done = {r.reference_id: r for r in read_rows(out)}
    fast = LocaliseOptions.parse({**(options or {}), "profile": "fast"})
    fine_conf = {**(options or {}).get("fine_conf", {}), "escalate_below": 1.0}
    accurate = LocaliseOptions.parse({**(options or {}), "profile": "accurate",
                                      "fine_conf": fine_conf})  # fmt: skip
    centroid = map_centroid(ref_map.positions)
    result = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for row in rows:
            rid = ref_map.ids[row]
            rec = done.get(rid)
            if rec is not None and not (has_fine and rec.needs_fine(fine_below)):
                result.append(rec)
                continue
            t0 = time.perf_counter()
            image = read_image(image_of(rid))
            hidden = hidden_mask(ref_map, row)
            truth = (float(ref_map.positions[row, 0]), float(ref_map.positions[row, 1]))
            if rec is None:
                res = localiser.localise(image, fast, hidden, calibrated=False)
                # Scored as an evaluation scores (core/evaluation.py): a declined answer at its
                # guess, or without one at its best candidate, so the fit weighs what users
                # would be told.
                coarse = score_result(rid, truth, res, 0.0, centroid)
                rec = HeldoutRow(
                    rid, *truth, coarse.scored_x, coarse.scored_y, float(res.estimate.confidence)
                )
            if has_fine and rec.coarse_score < fine_below:
                rec.fine_tried = True
                res = localiser.localise(image, accurate, hidden, calibrated=False)
                if "fine" in res.timings:  # it ran (the views had fine features)
                    fine = score_result(rid, truth, res, 0.0, centroid)
                    rec.fine_x, rec.fine_y = fine.scored_x, fine.scored_y
                    rec.fine_score = float(res.estimate.confidence)
                    rec.fine_switched = res.estimate.method.startswith("fine")
            rec.seconds += time.perf_counter() - t0
            f.write(json.dumps(asdict(rec)) + "\n")  # read back last-wins (read_rows)
            f.flush()
            result.append(rec)
            if on_done:
                on_done(rec)
    return result


def read_rows(path: Path) -> list[HeldoutRow]:
    """The rows of a held-out file, one per reference: a row measured again (for the fine
    stage) replaces the earlier one."""
    if not path.is_file():
        return []
    rows: dict[str, HeldoutRow] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                row = HeldoutRow(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut short by a crash: that query runs again
            rows[row.reference_id] = row
    return list(rows.values())


def fit(
    rows: list[HeldoutRow],
    fallback: tuple[float, float],
    max_escalated: float = 1.0,
    fine_extractor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The training record: escalation threshold, calibration curves and held-out figures.

    The escalation threshold is the coarse confidence below which the fine stage's answer
    gives the lowest held-out MAE, escalating at most ``max_escalated`` of the queries (ties:
    the lower threshold, which costs less). Confidence becomes P(error < 5), fitted per path
    (coarse answer, fine answer) by isotonic regression; a query is "localised" when that
    probability is at least 1/2. Without a row that ran the fine stage there is nothing to fit
    it on: the record has no threshold and no fine curve, and ``fine_missing`` says why.
    ``fine_extractor`` is the map's fine set, recorded so a later set is not judged by it.
    """
    if not rows:
        raise ValueError("no held-out rows to fit on")
    coarse_err = np.array([r.error(r.coarse_x, r.coarse_y, fallback) for r in rows])
    coarse_score = np.array([r.coarse_score for r in rows])
    has_fine = np.array([r.fine_score is not None for r in rows])
    record: dict[str, Any] = {
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "heldout_queries": len(rows),
        "fine_extractor": fine_extractor,
        "calibration": {"coarse": isotonic(coarse_score, hits(coarse_err))},
        "localised_probability": LOCALISED_PROBABILITY,
    }
    final_err, esc = coarse_err, np.zeros(len(rows), bool)
    if has_fine.any():
        fine_err = np.array(
            [r.error(r.fine_x, r.fine_y, fallback) if r.fine_score is not None else np.nan
             for r in rows]
        )  # fmt: skip
        fine_score = np.array([r.fine_score if r.fine_score is not None else np.nan for r in rows])
        record["escalate_below"] = _escalate_below(
            coarse_score, coarse_err, has_fine, fine_err, max_escalated
        )
        record["calibration"]["fine"] = isotonic(fine_score[has_fine], hits(fine_err[has_fine]))
        esc = has_fine & (coarse_score < record["escalate_below"])
        final_err = np.where(esc, fine_err, coarse_err)
    elif fine_extractor is None:
        record["fine_missing"] = "the map has no fine set"
    else:
        record["fine_missing"] = "no held-out position ran the fine stage"
    record["heldout"] = {
        "coarse_mae": float(coarse_err.mean()),
        "mae": float(final_err.mean()),
        "median": float(np.median(final_err)),
        "within_5": float(hits(final_err).mean()),
        "escalated": float(esc.mean()),
        "fine_run": int(has_fine.sum()),
    }
    return record


def _escalate_below(
    coarse_score: np.ndarray,
    coarse_err: np.ndarray,
    has_fine: np.ndarray,
    fine_err: np.ndarray,
    max_escalated: float,
) -> float:
    """The threshold with the lowest held-out MAE within the escalation budget."""
    candidates = np.unique(np.concatenate([[0.0], coarse_score[has_fine] + 1e-9]))
    best = (np.inf, 0.0)
    for t in candidates:
        esc = has_fine & (coarse_score < t)
        if esc.mean() > max_escalated:
            continue
        err = np.where(esc, fine_err, coarse_err)
        if err.mean() < best[0] - 1e-9:
            best = (float(err.mean()), float(t))
    return best[1]


def fit_map(
    store: MapStore,
    name: str,
    image_of: Callable[[str], Path],
    queries: int = HELDOUT_QUERIES,
    seed: int = 0,
    fine_below: float = HELDOUT_FINE_BELOW,
    device: str = "cpu",
    batch: int | None = None,
    on_done: Callable[[HeldoutRow], None] | None = None,
) -> dict[str, Any] | None:
    """Measure the map on ``queries`` held-out positions and store its training record.

    The rows go to ``heldout.jsonl`` in the map folder, so an interrupted fit resumes; with
    ``batch``, at most that many new pseudo-queries run and None is returned while some are
    left (how a build worker fits a big map in several short tasks). The fine stage is fitted
    when the map has a fine feature set; references lacking fine features get them from
    ``image_of`` as the fit needs them.
    """
    ref_map = store.open(name)
    loc = Localiser(ref_map, device, fine_source=image_of)
    rows = sample_heldout(ref_map, queries, seed)
    out = ref_map.path / HELDOUT_FILE
    has_fine = ref_map.fine_extractor is not None
    done = {r.reference_id: r for r in read_rows(out)}
    todo = [
        r for r in rows
        if ref_map.ids[r] not in done or (has_fine and done[ref_map.ids[r]].needs_fine(fine_below))
    ]  # fmt: skip
    if batch is not None and len(todo) > batch:
        run_heldout(loc, todo[:batch], image_of, out, fine_below=fine_below, on_done=on_done)
        return None
    got = run_heldout(loc, rows, image_of, out, fine_below=fine_below, on_done=on_done)
    record = fit(got, map_centroid(ref_map.positions), fine_extractor=ref_map.fine_extractor)
    record.update(queries=queries, seed=seed, fine_below=fine_below)
    redone = sum(1 for r in todo if ref_map.ids[r] in done)
    record["last_run"] = {"measured": len(todo) - redone, "fine_remeasured": redone}
    write_training(ref_map.path, record)
    return record
