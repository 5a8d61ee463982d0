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

The default sample is 200 positions; the map report (core/mapreport.py) measures every one
(``queries=None``), continuing the same order, and the fit then uses every row measured. Rows
measured before the map grew are measured again where a new reference stands near them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import LOCALISED_PROBABILITY, isotonic
from core.defaults import HELDOUT_FINE_BELOW, HELDOUT_QUERIES, HELDOUT_REMEASURE_SPACINGS
from core.evaluation import best_candidate, hits, l1_error, map_centroid, score_result
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapstore import MapStore, ReferenceMap, atomic_write_text, write_training
from core.positions import at_position, position_groups, spacing
from core.types import LocalisationResult

HELDOUT_FILE = "heldout.jsonl"  # in the map folder: one row per pseudo-query done
# In the map folder: when each reference joined the map, to tell which rows were measured
# before a new one near them (those are measured again).
GENERATIONS_FILE = "heldout-generations.json"


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
    # The reference each profile's answer matched best (most inliers): on a wrong answer, the
    # place it took this one for (the map report's "worst places"); None in older rows.
    matched: str | None = None
    fine_matched: str | None = None
    # The map's generation (:func:`reference_generations`) when the row was measured.
    generation: int = 0

    def needs_fine(self, fine_below: float) -> bool:
        """Measured without the fine stage although its coarse answer is in doubt: a row from
        before the map had a fine set."""
        return not self.fine_tried and self.fine_score is None and self.coarse_score < fine_below

    def error(self, x: float | None, y: float | None, fallback: tuple[float, float]) -> float:
        if x is None or y is None:
            x, y = fallback
        return l1_error(x, y, self.truth_x, self.truth_y)


def sample_heldout(
    ref_map: ReferenceMap, n: int | None, seed: int = 0, views: int = 1
) -> list[int]:
    """Map rows of one view at each of ``n`` distinct positions (every position when None or
    more than there are), chosen reproducibly from ``seed``.

    The positions come in one fixed order for a seed, so a sample of n is the start of every
    larger one: measuring every position reuses the rows of the default 200. ``views`` > 1
    adds further views of each position after the first (all of them when it exceeds their
    number); they follow the first views, so the same holds for them."""
    groups = position_groups(ref_map.positions)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(int(groups.max()) + 1 if len(groups) else 0)[:n]
    rows = [np.flatnonzero(groups == g) for g in chosen]
    first = [int(rng.choice(r)) for r in rows]
    more = [int(i) for r, f in zip(rows, first, strict=True) for i in r[r != f][: views - 1]]
    return first + more


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
    again: set[str] | frozenset[str] = frozenset(),
    generation: int = 0,
) -> list[HeldoutRow]:
    """Localise the views ``rows`` with their positions hidden; rows are appended to ``out``
    (JSON lines), and rows already there are not run again, but for the reference ids
    ``again`` (measured afresh once). The fine stage runs on those whose
    coarse confidence is below ``fine_below`` (when the map has a fine feature set), also on
    rows already there that were measured without it (their coarse answer is kept)."""
    ref_map = localiser.map
    has_fine = ref_map.fine_extractor is not None
    done = {r.reference_id: r for r in read_rows(out) if r.reference_id not in again}
    fast = LocaliseOptions.parse({**(options or {}), "profile": "fast"})
    fine_conf = {**(options or {}).get("fine_conf", {}), "escalate_below": 1.0}
    accurate = LocaliseOptions.parse({**(options or {}), "profile": "accurate",
                                      "fine_conf": fine_conf})  # fmt: skip
    centroid = map_centroid(ref_map.positions)
    result = []
    out.parent.mkdir(parents=True, exist_ok=True)
    _end_cut_line(out)
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
                    rid, *truth, coarse.scored_x, coarse.scored_y, float(res.estimate.confidence),
                    matched=_matched(res), generation=generation,
                )  # fmt: skip
            if has_fine and rec.coarse_score < fine_below:
                rec.fine_tried = True
                res = localiser.localise(image, accurate, hidden, calibrated=False)
                if "fine" in res.timings:  # it ran (the views had fine features)
                    fine = score_result(rid, truth, res, 0.0, centroid)
                    rec.fine_x, rec.fine_y = fine.scored_x, fine.scored_y
                    rec.fine_score = float(res.estimate.confidence)
                    rec.fine_switched = res.estimate.method.startswith("fine")
                    rec.fine_matched = _matched(res)
            rec.seconds += time.perf_counter() - t0
            f.write(json.dumps(asdict(rec)) + "\n")  # read back last-wins (read_rows)
            f.flush()
            result.append(rec)
            if on_done:
                on_done(rec)
    return result


def _end_cut_line(path: Path) -> None:
    """End a last line a killed run left without its newline, so that the next row appended
    starts a line of its own instead of joining that unreadable one (and being lost with it)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, 2)
        if f.read(1) != b"\n":
            f.write(b"\n")


def _matched(result: LocalisationResult) -> str | None:
    return best_candidate(result.candidates).reference_id if result.candidates else None


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
    queries: int | None = HELDOUT_QUERIES,
    seed: int = 0,
    fine_below: float = HELDOUT_FINE_BELOW,
    device: str = "cpu",
    batch: int | None = None,
    on_done: Callable[[HeldoutRow], None] | None = None,
    views: int = 1,
    localiser: Localiser | None = None,
) -> dict[str, Any] | None:
    """Measure the map on ``queries`` held-out positions (None: every position; ``views`` per
    position) and store its training record, fitted on every row measured so far.

    The rows go to ``heldout.jsonl`` in the map folder, so an interrupted fit resumes; with
    ``batch``, at most that many new pseudo-queries run and None is returned while some are
    left (how a build worker fits a big map in several short tasks). Rows measured before the
    map grew are measured again where a new reference stands near them (:func:`stale_ids`).
    The fine stage is fitted when the map has a fine feature set; references lacking fine
    features get them from ``image_of`` as the fit needs them. A worker fitting in steps passes
    the ``localiser`` it keeps between them, of this map's folder, so that each step does not
    load the models and the map again.
    """
    if localiser is not None:
        require_map_of(localiser, store, name)
    loc = localiser or Localiser(store.open(name), device, fine_source=image_of)
    ref_map = loc.map
    out = ref_map.path / HELDOUT_FILE
    has_fine = ref_map.fine_extractor is not None
    generation, added = reference_generations(ref_map)
    done = {r.reference_id: r for r in read_rows(out) if r.reference_id in ref_map.index}
    again = stale_ids(ref_map, list(done.values()), added)
    sample = sample_heldout(ref_map, queries, seed, views)
    # Every row measured before stays in the fit: more rows, the same rules.
    rows = sample + sorted({ref_map.index[rid] for rid in done} - set(sample))
    todo = [
        r for r in rows
        if ref_map.ids[r] not in done or ref_map.ids[r] in again
        or (has_fine and done[ref_map.ids[r]].needs_fine(fine_below))
    ]  # fmt: skip
    run = partial(run_heldout, loc, image_of=image_of, out=out, fine_below=fine_below,
                  on_done=on_done, again=again, generation=generation)  # fmt: skip
    if batch is not None and len(todo) > batch:
        run(todo[:batch])
        return None
    got = run(rows)
    record = fit(got, map_centroid(ref_map.positions), fine_extractor=ref_map.fine_extractor)
    record.update(queries=queries, views=views, seed=seed, fine_below=fine_below)
    # A photo-set fit (core/setfit.py) stays until the sets are measured again.
    earlier = store.training(name)
    if "set" in earlier.get("calibration", {}):
        record["calibration"]["set"] = earlier["calibration"]["set"]
        record["set_fit"] = earlier.get("set_fit")
    ids = [ref_map.ids[r] for r in todo]
    redone = sum(1 for rid in ids if rid in done and rid not in again)
    record["last_run"] = {
        "measured": sum(1 for rid in ids if rid not in done),
        "fine_remeasured": redone,
        "remeasured_near_new": sum(1 for rid in ids if rid in again),
    }
    write_training(ref_map.path, record)
    return record


def require_map_of(localiser: Localiser, store: MapStore, name: str) -> None:
    """ValueError unless ``localiser`` holds map ``name`` of ``store``: a fit writes its rows
    beside the localiser's map and its record in the store's."""
    if localiser.map.path != store.path(name):
        raise ValueError(f"the localiser given is of {localiser.map.path}, not map {name!r}")


def reference_generations(ref_map: ReferenceMap) -> tuple[int, dict[str, int]]:
    """The map's current generation and the generation each reference was added in, kept in
    the map folder: a map's references are generation 0 when first measured, and each later
    measurement that finds new references numbers them one more."""
    path = ref_map.path / GENERATIONS_FILE
    known = json.loads(path.read_text()) if path.is_file() else None
    if known is None:
        generation, added = 0, dict.fromkeys(ref_map.ids, 0)
    else:
        generation, added = int(known["generation"]), dict(known["references"])
        new = [rid for rid in ref_map.ids if rid not in added]
        if not new:
            return generation, added
        generation += 1
        added.update(dict.fromkeys(new, generation))
    atomic_write_text(path, json.dumps({"generation": generation, "references": added}))
    return generation, added


def stale_ids(ref_map: ReferenceMap, rows: list[HeldoutRow], added: dict[str, int]) -> set[str]:
    """The rows to measure again because the map grew near them: those within
    ``HELDOUT_REMEASURE_SPACINGS`` position spacings of a reference added after the row was
    measured (a row measured again carries the new generation, so it is measured once)."""
    later = np.array([added.get(rid, 0) for rid in ref_map.ids])
    if not rows or later.max(initial=0) == 0:
        return set()
    from scipy.spatial import cKDTree

    radius = HELDOUT_REMEASURE_SPACINGS * spacing(ref_map.positions)
    grown = np.flatnonzero(later > 0)
    tree = cKDTree(ref_map.positions[grown])
    truth = np.array([[r.truth_x, r.truth_y] for r in rows])
    near = tree.query_ball_point(truth, radius)
    return {
        r.reference_id
        for r, idx in zip(rows, near, strict=True)
        if idx and later[grown[idx]].max() > r.generation
    }
