"""Where will a map fail? Its report, computed from the held-out rows (core/heldout.py).

Every reference position localised with its own views hidden says how well that place
localises. The report groups those rows on the plan of the site:

- ``positions``: one entry per reference position: its held-out error (mean over its measured
  views, |dx| + |dy| in map units), whether it was localised (the map's calibrated confidence
  at least ``localised_probability``, as a job is told), null where not measured yet;
- ``areas``: square cells of ``area_size`` (``AREA_SPACINGS`` position spacings,
  core/positions.py) with their positions' held-out MAE;
- ``holes``: connected parts of the site (inside the convex hull of its positions) farther than
  ``hole_distance`` (``HOLE_SPACINGS`` spacings) from every reference position, each with the
  point farthest from them;
- ``suggestions``: where to add reference photos, ranked: the areas whose MAE is above the
  site's, most failed positions (error of ``HIT_RADIUS`` or more) first, each at the failed
  position nearest the middle of its failures;
- ``worst``: the views with the largest errors and the reference each matched instead;
- ``reliability``: calibrated confidence against the share of hits, per confidence bin.

Distances are in position spacings so that one rule fits maps in metres, feet or pixels. The
reliability diagram is in-sample: the calibration was fitted on these same rows.
The schema is :class:`MapReport` (``schema`` is its version); the API serves it as is.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core.calibration import LOCALISED_PROBABILITY, calibrate, expected_calibration_error
from core.errors import InputError
from core.evaluation import HIT_RADIUS, map_centroid
from core.heldout import HELDOUT_FILE, HeldoutRow, read_rows
from core.mapstore import MapStore
from core.positions import position_key, spacing

SCHEMA_VERSION = 1
AREA_SPACINGS = 4.0  # an area's side, in position spacings
HOLE_SPACINGS = 3.0  # a hole is farther than this from every reference position
MIN_AREA_POSITIONS = 3  # fewer measured positions than this: an area is not ranked
SUGGESTIONS = 10
WORST = 6
PROFILES = ("fast", "accurate")


@dataclass
class PositionEntry:
    x: float
    y: float
    views_measured: int
    error: float | None  # mean held-out error of the measured views
    localised: bool | None  # at least half of the measured views localised
    confidence: float | None  # mean calibrated confidence


@dataclass
class Area:
    x0: float
    y0: float
    x1: float
    y1: float
    positions: int  # measured positions in it
    mae: float
    failed: int  # positions with an error of HIT_RADIUS or more


@dataclass
class Hole:
    x: float  # the point of the hole farthest from every reference position
    y: float
    distance: float  # from there to the nearest reference position
    area: float  # in map units squared


@dataclass
class Suggestion:
    rank: int
    x: float
    y: float
    mae: float  # of the area it stands for
    positions: int
    failed: int
    area: list[float]  # [x0, y0, x1, y1]


@dataclass
class WorstPlace:
    reference_id: str  # the held-out view
    x: float
    y: float
    error: float
    localised: bool
    answer_x: float
    answer_y: float
    matched: str | None  # the reference it matched best instead


@dataclass
class ReliabilityBin:
    confidence: float  # mean calibrated confidence of the bin
    hit_rate: float  # share of its views within HIT_RADIUS
    count: int


@dataclass
class MapReport:
    schema: int
    map: str
    profile: str
    positions_total: int
    positions_measured: int
    views_measured: int
    mae: float
    median: float
    within_5: float
    localised: float  # share of views localised
    spacing: float
    area_size: float
    hole_distance: float
    fitted_at: str | None
    ece: float
    positions: list[PositionEntry] = field(default_factory=list)
    areas: list[Area] = field(default_factory=list)
    holes: list[Hole] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    worst: list[WorstPlace] = field(default_factory=list)
    reliability: list[ReliabilityBin] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scored:
    """One held-out view as a profile answered it."""

    row: HeldoutRow
    x: float
    y: float
    error: float
    confidence: float
    matched: str | None

    def localised(self, threshold: float) -> bool:
        return self.confidence >= threshold


def score_rows(
    rows: list[HeldoutRow], training: dict[str, Any], profile: str, fallback: tuple[float, float]
) -> list[Scored]:
    """Each row as ``profile`` answers it under the map's fit: the fine answer where the fit
    escalates (accurate), else the coarse one; its confidence calibrated by the fit's curve."""
    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
    curves = training.get("calibration", {})
    if "coarse" not in curves:
        raise InputError("the map has no fit: run `featureloc map fit` first")
    below = training.get("escalate_below") if profile == "accurate" else None
    if profile == "accurate" and (below is None or "fine" not in curves):
        raise InputError("the map's fit has no fine part: its report is the fast profile's")
    out = []
    for r in rows:
        if below is not None and r.fine_score is not None and r.coarse_score < below:
            x, y, score, curve, matched = r.fine_x, r.fine_y, r.fine_score, "fine", r.fine_matched
        else:
            x, y, score, curve, matched = (
                r.coarse_x,
                r.coarse_y,
                r.coarse_score,
                "coarse",
                r.matched,
            )
        if x is None or y is None:
            x, y = fallback
        error = r.error(x, y, fallback)
        out.append(Scored(r, x, y, error, calibrate(curves[curve], score), matched))
    return out


def build_report(
    name: str,
    positions: np.ndarray,
    rows: list[HeldoutRow],
    training: dict[str, Any],
    profile: str = "fast",
    hole_distance: float | None = None,
) -> MapReport:
    """The report of map ``name`` from its reference positions (N, 2), its held-out rows and
    its training record. InputError where there is nothing to report on."""
    positions = np.asarray(positions, np.float64).reshape(-1, 2)
    if not rows:
        raise InputError(
            f"map {name!r} has not been measured: run `featureloc map fit {name} "
            "--every-position` (or on the build queue with --queue)"
        )
    scored = score_rows(rows, training, profile, map_centroid(positions))
    threshold = float(training.get("localised_probability", LOCALISED_PROBABILITY))
    step = spacing(positions)
    area_size = AREA_SPACINGS * step
    hole_distance = HOLE_SPACINGS * step if hole_distance is None else hole_distance
    entries = _position_entries(positions, scored, threshold)
    errors = np.array([s.error for s in scored])
    conf = np.array([s.confidence for s in scored])
    ece, bins = expected_calibration_error(conf, errors < HIT_RADIUS)
    areas = _areas(entries, positions.min(axis=0), area_size)
    return MapReport(
        schema=SCHEMA_VERSION,
        map=name,
        profile=profile,
        positions_total=len(entries),
        positions_measured=sum(1 for e in entries if e.error is not None),
        views_measured=len(scored),
        mae=float(errors.mean()),
        median=float(np.median(errors)),
        within_5=float((errors < HIT_RADIUS).mean()),
        localised=float((conf >= threshold).mean()),
        spacing=step,
        area_size=area_size,
        hole_distance=hole_distance,
        fitted_at=training.get("fitted_at"),
        ece=ece,
        positions=entries,
        areas=areas,
        holes=find_holes(positions, hole_distance, step),
        suggestions=suggest(areas, entries, float(errors.mean())),
        worst=[
            WorstPlace(
                s.row.reference_id,
                s.row.truth_x,
                s.row.truth_y,
                s.error,
                s.localised(threshold),
                s.x,
                s.y,
                s.matched,
            )
            for s in sorted(scored, key=lambda s: -s.error)[:WORST]
        ],  # fmt: skip
        reliability=[ReliabilityBin(c, h, n) for c, h, n in bins],
    )


def _position_entries(
    positions: np.ndarray, scored: list[Scored], threshold: float
) -> list[PositionEntry]:
    by_place: dict[tuple[float, float], list[Scored]] = defaultdict(list)
    for s in scored:
        by_place[position_key(s.row.truth_x, s.row.truth_y)].append(s)
    places = sorted({position_key(x, y) for x, y in positions})
    out = []
    for place in places:
        views = by_place.get(place, [])
        if not views:
            out.append(PositionEntry(place[0], place[1], 0, None, None, None))
            continue
        localised = sum(s.localised(threshold) for s in views)
        out.append(
            PositionEntry(
                place[0], place[1], len(views),
                float(np.mean([s.error for s in views])),
                2 * localised >= len(views),
                float(np.mean([s.confidence for s in views])),
            )
        )  # fmt: skip
    return out


def area_index(origin: np.ndarray, size: float, x: float, y: float) -> tuple[int, int]:
    """The (column, row) of the area holding (x, y) on the grid from ``origin``."""
    return int(np.floor((x - origin[0]) / size)), int(np.floor((y - origin[1]) / size))


def _areas(entries: list[PositionEntry], origin: np.ndarray, size: float) -> list[Area]:
    cells: dict[tuple[int, int], list[PositionEntry]] = defaultdict(list)
    for e in entries:
        if e.error is not None:
            cells[area_index(origin, size, e.x, e.y)].append(e)
    out = []
    for (i, j), members in sorted(cells.items()):
        errs = np.array([e.error for e in members], np.float64)
        x0, y0 = origin[0] + i * size, origin[1] + j * size
        out.append(
            Area(float(x0), float(y0), float(x0 + size), float(y0 + size), len(members),
                 float(errs.mean()), int((errs >= HIT_RADIUS).sum()))
        )  # fmt: skip
    return out


def area_of(report: MapReport, x: float, y: float) -> Area | None:
    """The report's area holding (x, y), None outside every measured one."""
    for a in report.areas:
        if a.x0 <= x < a.x1 and a.y0 <= y < a.y1:
            return a
    return None


def suggest(areas: list[Area], entries: list[PositionEntry], mae: float) -> list[Suggestion]:
    """The areas worse than the site, most failed positions first (then highest MAE), each at
    the failed position nearest the middle of its failures: a place one can stand."""
    weak = [a for a in areas if a.positions >= MIN_AREA_POSITIONS and a.mae > mae]
    weak.sort(key=lambda a: (-a.failed, -a.mae))
    out: list[Suggestion] = []
    for a in weak[:SUGGESTIONS]:
        inside = [e for e in entries if e.error is not None and a.x0 <= e.x < a.x1
                  and a.y0 <= e.y < a.y1]  # fmt: skip
        failed = [e for e in inside if e.error is not None and e.error >= HIT_RADIUS] or inside
        pts = np.array([[e.x, e.y] for e in failed])
        spot = pts[np.argmin(((pts - pts.mean(axis=0)) ** 2).sum(axis=1))]
        out.append(
            Suggestion(len(out) + 1, float(spot[0]), float(spot[1]), a.mae, a.positions,
                       a.failed, [a.x0, a.y0, a.x1, a.y1])
        )  # fmt: skip
    return out


def find_holes(positions: np.ndarray, distance: float, step: float) -> list[Hole]:
    """The parts of the site farther than ``distance`` from every reference position, on a
    grid of ``step`` inside the positions' convex hull, largest first."""
    from scipy import ndimage
    from scipy.spatial import Delaunay, QhullError, cKDTree

    distinct = np.unique(positions, axis=0)
    if len(distinct) < 3:
        return []
    lo, hi = distinct.min(axis=0), distinct.max(axis=0)
    xs = np.arange(lo[0], hi[0] + step, step)
    ys = np.arange(lo[1], hi[1] + step, step)
    gx, gy = np.meshgrid(xs, ys)  # rows: y, columns: x
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    try:
        inside = Delaunay(distinct).find_simplex(grid) >= 0
    except QhullError:  # the positions lie on a line: no inside
        return []
    nearest, _ = cKDTree(distinct).query(grid)
    far = (inside & (nearest > distance)).reshape(gx.shape)
    labels, count = ndimage.label(far, structure=np.ones((3, 3)))
    holes: list[Hole] = []
    flat = labels.ravel()
    for k in range(1, count + 1):
        members = np.flatnonzero(flat == k)
        best = members[np.argmax(nearest[members])]
        holes.append(
            Hole(float(grid[best, 0]), float(grid[best, 1]), float(nearest[best]),
                 float(len(members) * step * step))
        )  # fmt: skip
    return sorted(holes, key=lambda h: -h.area)


def map_report(
    store: MapStore, name: str, profile: str = "fast", hole_distance: float | None = None
) -> MapReport:
    """The report of a stored map: its positions, the held-out rows of references it still
    holds, and its training record. MapError for an unknown map."""
    ref_map = store.open(name)
    rows = [r for r in read_rows(ref_map.path / HELDOUT_FILE) if r.reference_id in ref_map.index]
    return build_report(name, ref_map.positions, rows, ref_map.training, profile, hole_distance)
