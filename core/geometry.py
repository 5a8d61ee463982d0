"""The map's geometry: each reference's heading and the 3D points of its keypoints, computed
once when the map is built, and a query placed by one absolute-pose solve against them.

Every reference's position is known and the cameras are upright at about one height, so the
map needs no full structure-from-motion run: each reference is matched with a few *partners*
(references within ``min_baseline``..``max_baseline`` that look most alike by the retriever's
global descriptor), the pair's essential matrix gives the direction of the partner in the
reference's camera, and that direction against the known map direction between the two gives
the reference's heading (its yaw; the median over its partners). With headings and positions
every camera's pose is known in the map frame (x, y on the ground, z up, cameras at z = 0), so
the pairs' verified matches are triangulated with OpenCV straight into map coordinates: a
keypoint keeps the point of the pair that reprojects best, with the partner it came from (a
held-out run must not use points made with the references it hides).

At query time the verified matches of the winning place's views become 2D-3D matches, and one
PnP RANSAC gives the query's camera centre (x, y) and heading (``place_by_pose``): no pairwise
geometry per query. Stored per build chunk under ``geometry/`` in the flat format of
``core/flatfile.py`` (read with pread, shared through the page cache).

Frames: the map is right-handed seen from above (x east, y north) unless ``left_handed``, as in
``core/placement.py``; a camera's axes are x right, y down, z forward.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from pydantic import Field

from core.angles import circular_median, wrap
from core.config import Conf
from core.flatfile import read_rows, write_arrays
from core.pairframes import partners_of
from core.parts import PART_SUFFIX, PartIndex
from core.placement import Link, pnp_ransac
from core.types import FeatureLookup, Features, Matches

GEOMETRY_DIR = "geometry"


class GeometryConfig(Conf):
    partners: int = Field(4, ge=1, le=16)  # references matched with each reference
    min_baseline: float = Field(0.3, gt=0)  # map units; too short cannot fix a direction
    max_baseline: float = Field(15.0, gt=0)
    min_points: int = Field(20, ge=8)  # essential-matrix inliers for a pair to count
    essential_px: float = Field(2.0, gt=0)  # MAGSAC threshold of the pair's essential matrix
    max_reprojection_px: float = Field(4.0, gt=0)  # in both views, for a point to be kept
    max_depth: float = Field(200.0, gt=0)  # map units in front of both cameras
    # Rays meeting at a smaller angle fix the point's depth poorly: a pixel of error moves
    # it by metres along the ray, unseen by the reprojection check (the scene test's tail).
    min_angle_deg: float = Field(4.0, ge=0)
    max_heading_disagreement: float = Field(2.0, gt=0)  # degrees, a pair's against the median
    left_handed: bool = False


class PoseConfig(Conf):
    """A query's absolute pose against the map's points (``place_by_pose``)."""

    min_inliers: int = Field(12, ge=6)
    pnp_px: float = Field(4.0, gt=0)  # RANSAC reprojection threshold
    max_shift: float = Field(9.0, ge=0)  # L1 from the estimate being refined
    max_height: float = Field(3.0, gt=0)  # |z| of the camera centre (cameras stand at z = 0)
    left_handed: bool = False


@dataclass(frozen=True)
class ReferenceGeometry:
    """One reference's heading and its keypoints' 3D points in the map frame."""

    # Both in the solvers' right-handed world frame: the map's, with y mirrored for a
    # left-handed map (``GeometryConfig.left_handed``).
    heading: float  # radians (NaN: no partner gave one)
    points: np.ndarray  # (N, 3) float32 per keypoint, NaN where none
    errors: np.ndarray  # (N,) float32 reprojection error in px, NaN where none
    partner: np.ndarray  # (N,) int16 index into ``partners`` of the pair that made the point
    partners: tuple[str, ...]  # reference ids of the partners

    def usable(self, hidden_ids: frozenset[str] = frozenset()) -> np.ndarray:
        """(N,) bool: keypoints with a point not made with a hidden reference."""
        ok = ~np.isnan(self.points[:, 0])
        if hidden_ids and self.partners:
            bad = [k for k, rid in enumerate(self.partners) if rid in hidden_ids]
            if bad:
                ok &= ~np.isin(self.partner, bad)
        return ok


@dataclass(frozen=True)
class PosePlacement:
    x: float
    y: float
    heading: float  # radians, map frame
    inliers: int  # 2D-3D inliers of the PnP solve
    correspondences: int


# --- frames ---------------------------------------------------------------------------


def _to_world(xy: np.ndarray, left_handed: bool) -> np.ndarray:
    """Map (x, y) to the right-handed world frame the solvers work in."""
    xy = np.asarray(xy, np.float64)
    return xy * np.array([1.0, -1.0]) if left_handed else xy


def camera_rotation(heading: float) -> np.ndarray:
    """World-to-camera rotation of an upright camera looking along ``heading`` (world frame)."""
    c, s = math.cos(heading), math.sin(heading)
    return np.array([[s, -c, 0.0], [0.0, 0.0, -1.0], [c, s, 0.0]])


def _projection(k: np.ndarray, heading: float, centre_xy: np.ndarray) -> np.ndarray:
    rot = camera_rotation(heading)
    centre = np.array([centre_xy[0], centre_xy[1], 0.0])
    return k @ np.hstack([rot, (-rot @ centre)[:, None]])


# --- build ----------------------------------------------------------------------------


@dataclass
class _Pair:
    i: int
    j: int
    matches: np.ndarray  # (M, 2) keypoint indices of i and j, verified by the essential matrix
    heading_i: float  # the heading of i the direction to j implies (world frame)
    heading_j: float
    turn: float  # heading of j minus heading of i, from the pair's rotation


def geometry_partners(
    i: int,
    positions: np.ndarray,
    similar: Callable[[int, np.ndarray], np.ndarray | None],
    conf: GeometryConfig,
) -> list[int]:
    """The partners whose pairs give reference ``i`` its heading and points."""
    return partners_of(i, positions, similar, conf.partners, conf.min_baseline, conf.max_baseline)


def _normalise(points: np.ndarray, k: np.ndarray) -> np.ndarray:
    pts = points.reshape(-1, 1, 2).astype(np.float64)
    return cv2.undistortPoints(pts, k, None).reshape(-1, 2)


def _pair(
    i: int,
    j: int,
    fi: Features,
    fj: Features,
    ki: np.ndarray,
    kj: np.ndarray,
    world: np.ndarray,
    match: Callable[[Features, Features], Matches],
    conf: GeometryConfig,
) -> _Pair | None:
    """Match two references and read their headings off the essential matrix."""
    m = match(fi, fj).indices
    if len(m) < conf.min_points:
        return None
    pi, pj = _normalise(fi.keypoints[m[:, 0]], ki), _normalise(fj.keypoints[m[:, 1]], kj)
    focal = float(np.mean([ki[0, 0], ki[1, 1], kj[0, 0], kj[1, 1]]))
    try:
        e, mask = cv2.findEssentialMat(
            pi, pj, np.eye(3), cv2.USAC_MAGSAC, 0.999, conf.essential_px / focal
        )
        if e is None or mask is None or e.shape[0] < 3:
            return None
        _, rot, t, good = cv2.recoverPose(e[:3], pi, pj, np.eye(3), mask=mask.copy())
    except cv2.error:
        return None
    if int((good.ravel() > 0).sum()) < conf.min_points:  # in front of both cameras
        return None
    t = t.ravel()
    c_j = -rot.T @ t  # j's centre in i's camera (x right, z forward)
    d = world[j] - world[i]
    phi = math.atan2(d[1], d[0])
    # A point at bearing beta to the right of a camera looking along h lies at h - beta.
    heading_i = wrap(phi + math.atan2(c_j[0], c_j[2]))
    # i's forward axis seen from j: at bearing b right of j's forward, so h_i = h_j - b.
    heading_j = wrap(heading_i + math.atan2(rot[0, 2], rot[2, 2]))
    # The essential matrix has 5 degrees of freedom; two upright cameras at known positions
    # have 2 (their headings). Refit those two on the matches: a dominant plane or a short
    # baseline no longer tilts the pose (the 5-DOF fit can, by degrees).
    heading_i, heading_j, inliers = _refine_headings(
        pi, pj, world[i], world[j], heading_i, heading_j, conf.essential_px / focal
    )
    if inliers.sum() < conf.min_points:
        return None
    turn = wrap(heading_j - heading_i)
    return _Pair(i, j, m[inliers], heading_i, heading_j, turn)


def _essentials(hi: np.ndarray, hj: np.ndarray, ci: np.ndarray, cj: np.ndarray) -> np.ndarray:
    """(G, 3, 3) essential matrices of upright cameras with headings ``hi``, ``hj`` (G,) at
    ground positions ``ci``, ``cj``: x_j = R x_i + t with R = R_j R_i^T, t = R_j (c_i - c_j)."""

    def rot(h: np.ndarray) -> np.ndarray:
        c, s, z, o = np.cos(h), np.sin(h), np.zeros_like(h), np.ones_like(h)
        return np.stack([np.stack([s, -c, z], -1), np.stack([z, z, -o], -1),
                         np.stack([c, s, z], -1)], -2)  # fmt: skip

    ri, rj = rot(hi), rot(hj)
    r = rj @ np.swapaxes(ri, 1, 2)
    t = rj @ np.array([ci[0] - cj[0], ci[1] - cj[1], 0.0])
    tx = np.zeros_like(r)
    tx[:, 0, 1], tx[:, 0, 2], tx[:, 1, 2] = -t[:, 2], t[:, 1], -t[:, 0]
    tx[:, 1, 0], tx[:, 2, 0], tx[:, 2, 1] = t[:, 2], -t[:, 1], t[:, 0]
    return tx @ r


def _sampson(e: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(G, M) Sampson distances of normalised matches a -> b under each of ``e`` (G, 3, 3)."""
    ah = np.hstack([a, np.ones((len(a), 1))])
    bh = np.hstack([b, np.ones((len(b), 1))])
    ea = ah @ np.swapaxes(e, 1, 2)  # (G, M, 3): E a
    etb = bh @ e  # (G, M, 3): E^T b
    num = np.einsum("gmk,mk->gm", ea, bh) ** 2
    den = ea[..., 0] ** 2 + ea[..., 1] ** 2 + etb[..., 0] ** 2 + etb[..., 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-18))


def _refine_headings(
    a: np.ndarray,
    b: np.ndarray,
    ci: np.ndarray,
    cj: np.ndarray,
    hi: float,
    hj: float,
    threshold: float,
) -> tuple[float, float, np.ndarray]:
    """Both headings that best explain the matches (truncated squared Sampson error), searched
    on grids around the start, coarse to fine; and the inlier mask of the best."""
    for span, steps in ((math.radians(30), 31), (math.radians(2.5), 21), (math.radians(0.3), 13)):
        grid = np.linspace(-span, span, steps)
        mi, mj = np.meshgrid(hi + grid, hj + grid, indexing="ij")
        gi, gj = mi.ravel(), mj.ravel()
        d = _sampson(_essentials(gi, gj, ci, cj), a, b)
        cost = np.minimum(d, threshold) ** 2
        best = int(np.argmin(cost.sum(1)))
        hi, hj = float(gi[best]), float(gj[best])
    d = _sampson(_essentials(np.array([hi]), np.array([hj]), ci, cj), a, b)[0]
    return wrap(hi), wrap(hj), d < threshold


def _triangulate(
    pair: _Pair,
    fi: Features,
    fj: Features,
    ki: np.ndarray,
    kj: np.ndarray,
    headings: np.ndarray,
    world: np.ndarray,
    conf: GeometryConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The pair's matches triangulated in the world frame: (M, 3) points, (M,) worst
    reprojection error of the two views (inf where a point fails a check)."""
    pa = _projection(ki, headings[pair.i], world[pair.i])
    pb = _projection(kj, headings[pair.j], world[pair.j])
    xa = fi.keypoints[pair.matches[:, 0]].astype(np.float64)
    xb = fj.keypoints[pair.matches[:, 1]].astype(np.float64)
    xh = cv2.triangulatePoints(pa, pb, xa.T, xb.T)
    with np.errstate(divide="ignore", invalid="ignore"):
        pts = (xh[:3] / xh[3]).T
    err = np.zeros(len(pts))
    for proj, x in ((pa, xa), (pb, xb)):
        h = np.hstack([pts, np.ones((len(pts), 1))]) @ proj.T
        with np.errstate(divide="ignore", invalid="ignore"):
            px = h[:, :2] / h[:, 2:]
            e = np.hypot(*(px - x).T)
        depth = h[:, 2]  # K's last row is (0, 0, 1): the depth in that camera
        bad = ~np.isfinite(e) | (depth <= 0) | (depth > conf.max_depth)
        err = np.maximum(err, np.where(bad, np.inf, e))
    ray_a = pts - np.array([*world[pair.i], 0.0])
    ray_b = pts - np.array([*world[pair.j], 0.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.einsum("ij,ij->i", ray_a, ray_b) / (
            np.linalg.norm(ray_a, axis=1) * np.linalg.norm(ray_b, axis=1)
        )
    narrow = ~(cos <= math.cos(math.radians(conf.min_angle_deg)))
    return pts, np.where(narrow, np.inf, err)


def solve_headings(pairs: Sequence[_Pair], n: int) -> np.ndarray:
    """(n,) headings from the pairs (NaN where none): per reference, the weighted circular
    median of what its pairs found (each pair fits both of its headings, ``_refine_headings``);
    a median, so one wrong pair (a look-alike wall) does not move it."""
    votes: dict[int, list[tuple[float, float]]] = {}
    for p in pairs:
        w = float(len(p.matches))
        votes.setdefault(p.i, []).append((p.heading_i, w))
        votes.setdefault(p.j, []).append((p.heading_j, w))
    headings = np.full(n, np.nan)
    for i, vs in votes.items():
        headings[i] = circular_median([h for h, _ in vs], [w for _, w in vs])
    return headings


def build_geometry(
    indices: Sequence[int],
    features: FeatureLookup,
    positions: np.ndarray,
    ref_k: Callable[[int], np.ndarray],
    similar: Callable[[int, np.ndarray], np.ndarray | None],
    match: Callable[[Features, Features], Matches],
    ids: Sequence[str],
    conf: GeometryConfig | None = None,
    known_heading: Callable[[int], float | None] = lambda _i: None,
) -> dict[int, ReferenceGeometry]:
    """The geometry of the references ``indices`` (map rows), from their partners among all
    of the map's references (``positions``, ``features``: the whole map). A partner's heading
    is needed to triangulate with it: ``known_heading`` gives those already stored (a map
    being extended), the others come from the partner's own pairs. Every pair is matched once
    per call, so building a whole map in one call costs one pass over its pairs."""
    conf = conf or GeometryConfig()
    world = _to_world(positions, conf.left_handed)
    wanted = list(dict.fromkeys(int(i) for i in indices))
    partners = {i: geometry_partners(i, positions, similar, conf) for i in wanted}
    stored: dict[int, float] = {}
    for j in {j for js in partners.values() for j in js} - set(partners):
        h = known_heading(j)
        if h is not None and not math.isnan(h):
            stored[j] = h
        else:
            partners[j] = geometry_partners(j, positions, similar, conf)

    @lru_cache(maxsize=64)  # a reference's features, across its few pairs in a row
    def feats(i: int) -> Features:
        return features[i]

    pairs: dict[tuple[int, int], _Pair | None] = {}
    for i in sorted(partners):
        for j in partners[i]:
            key = (min(i, j), max(i, j))
            if key not in pairs:
                a, b = key
                pairs[key] = _pair(a, b, feats(a), feats(b), ref_k(a), ref_k(b), world, match, conf)
    headings = solve_headings([p for p in pairs.values() if p is not None], len(positions))
    for j, h in stored.items():
        headings[j] = h

    out: dict[int, ReferenceGeometry] = {}
    for i in wanted:
        n = len(feats(i))
        points = np.full((n, 3), np.nan, np.float32)
        errors = np.full(n, np.nan, np.float32)
        partner = np.full(n, -1, np.int16)
        for slot, j in enumerate(partners[i]):
            p = pairs.get((min(i, j), max(i, j)))
            if p is None or np.isnan(headings[i]) or np.isnan(headings[j]):
                continue
            # A pair that disagrees with the headings its references settled on matched the
            # wrong thing (a look-alike wall): its points would be wrong too.
            off = max(
                abs(wrap(p.heading_i - headings[p.i])), abs(wrap(p.heading_j - headings[p.j]))
            )
            if off > math.radians(conf.max_heading_disagreement):
                continue
            a, b = p.i, p.j
            pts, err = _triangulate(
                p, feats(a), feats(b), ref_k(a), ref_k(b), headings, world, conf
            )
            mine = p.matches[:, 0] if a == i else p.matches[:, 1]
            better = (err <= conf.max_reprojection_px) & ~(errors[mine] <= err)
            points[mine[better]] = pts[better]
            errors[mine[better]] = err[better]
            partner[mine[better]] = slot
        out[i] = ReferenceGeometry(
            float(headings[i]), points, errors, partner, tuple(ids[j] for j in partners[i])
        )
    return out


# --- storage --------------------------------------------------------------------------


def write_geometry(map_path: Path, items: Sequence[tuple[str, ReferenceGeometry]]) -> Path | None:
    """Store the geometry of some references (by id) as one new part."""
    if not items:
        return None
    directory = Path(map_path) / GEOMETRY_DIR
    directory.mkdir(parents=True, exist_ok=True)
    geo = [g for _, g in items]
    counts = np.array([len(g.points) for g in geo], np.int64)
    width = max((len(g.partners) for g in geo), default=0)
    partner_ids = np.array(
        [list(g.partners) + [""] * (width - len(g.partners)) for g in geo], dtype=str
    ).reshape(len(geo), width)
    arrays = {
        "ids": np.array([rid for rid, _ in items], dtype=str),
        "headings": np.array([g.heading for g in geo], np.float64),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "points": np.concatenate([g.points for g in geo]).astype(np.float32).reshape(-1, 3),
        "errors": np.concatenate([g.errors for g in geo]).astype(np.float32),
        "partner": np.concatenate([g.partner for g in geo]).astype(np.int16),
        "partner_ids": partner_ids,
    }
    # Named in time order: a reference rebuilt later (a map's extension gave it new partners)
    # is read from its newest part, as the last one opened wins (core/parts.py).
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
    return write_arrays(directory / name, arrays)


class GeometrySet(PartIndex):
    """Lazy access to a map's stored geometry: ``[i]`` -> ReferenceGeometry or None."""

    in_memory = ("offsets", "headings", "partner_ids")

    def __init__(self, map_path: Path, index: dict[str, int]) -> None:
        super().__init__(Path(map_path) / GEOMETRY_DIR, index)

    def heading(self, i: int) -> float | None:
        """The stored heading of reference ``i`` (from memory), None where not built."""
        where = self.locate(i)
        return None if where is None else float(where[0]["headings"][where[1]])

    def partners(self, i: int) -> tuple[str, ...] | None:
        """The partner ids of reference ``i`` (from memory), None where not built."""
        where = self.locate(i)
        return (
            None
            if where is None
            else tuple(str(p) for p in where[0]["partner_ids"][where[1]] if str(p))
        )

    def __getitem__(self, i: int) -> ReferenceGeometry | None:
        where = self.locate(i)
        if where is None:
            return None
        a, row = where
        lo, hi = int(a["offsets"][row]), int(a["offsets"][row + 1])
        return ReferenceGeometry(
            float(a["headings"][row]),
            read_rows(a["points"], lo, hi),
            read_rows(a["errors"], lo, hi),
            read_rows(a["partner"], lo, hi),
            tuple(str(p) for p in a["partner_ids"][row] if str(p)),
        )


# --- query ----------------------------------------------------------------------------


def _upright_pose(
    obj: np.ndarray, img: np.ndarray, k: np.ndarray, start: tuple[float, float, float], px: float
) -> tuple[float, float, float]:
    """(x, y, heading) of an upright camera at height 0 that best reprojects ``obj`` onto
    ``img`` (robust least squares from ``start``, scipy)."""
    # Imported here: scipy.optimize takes a third of a second, and every CLI command that
    # opens a map would pay it (core/mapstore.py imports this module).
    from scipy.optimize import least_squares

    def residuals(p: np.ndarray) -> np.ndarray:
        proj = _projection(k, float(p[2]), p[:2])
        h = np.hstack([obj, np.ones((len(obj), 1))]) @ proj.T
        z = np.where(np.abs(h[:, 2:]) < 1e-9, 1e-9, h[:, 2:])
        return (h[:, :2] / z - img).ravel()

    fit = least_squares(residuals, np.array(start, np.float64), loss="huber", f_scale=px)
    return float(fit.x[0]), float(fit.x[1]), wrap(float(fit.x[2]))


def place_by_pose(
    query: Features,
    query_k: np.ndarray,
    links: Sequence[Link],
    geometry: Callable[[int], ReferenceGeometry | None],
    around: tuple[float, float],
    conf: PoseConfig | None = None,
    hidden_ids: frozenset[str] = frozenset(),
) -> PosePlacement | None:
    """The query's camera centre and heading from its verified matches to the views in
    ``links`` through their keypoints' 3D points: one PnP RANSAC. None when too few points,
    when the solve fails, or when it lands farther than ``max_shift`` from ``around`` or off
    the cameras' height."""
    conf = conf or PoseConfig()
    q_to_pt: dict[int, np.ndarray] = {}
    for link in links:
        g = geometry(link.index)
        if g is None:
            continue
        ok = g.usable(hidden_ids)[link.ref_idx]
        for qi, pt in zip(link.query_idx[ok], g.points[link.ref_idx[ok]], strict=True):
            q_to_pt.setdefault(int(qi), pt)
    if len(q_to_pt) < conf.min_inliers:
        return None
    q_idx = np.fromiter(q_to_pt.keys(), np.int64)
    obj = np.array(list(q_to_pt.values()), np.float64)
    img = query.keypoints[q_idx].astype(np.float64)
    solved = pnp_ransac(obj, img, query_k, conf.pnp_px, conf.min_inliers)
    if solved is None:
        return None
    rot, tvec, inl = solved
    centre = -rot.T @ tvec
    forward = rot.T @ np.array([0.0, 0.0, 1.0])
    if abs(centre[2]) > conf.max_height:
        return None
    # The 6-DOF solve found the inliers; the pose itself is 3-DOF (upright, at the cameras'
    # height): refit x, y and heading on the inliers, which a dominant plane cannot tilt.
    x, y, heading = _upright_pose(
        obj[inl], img[inl], query_k, (centre[0], centre[1], math.atan2(forward[1], forward[0])),
        conf.pnp_px,
    )  # fmt: skip
    if conf.left_handed:  # back from the solvers' right-handed frame
        y, heading = -y, -heading
    if abs(x - around[0]) + abs(y - around[1]) > conf.max_shift:
        return None
    return PosePlacement(x, y, heading, len(inl), len(q_idx))
