"""Place a query between references by two-view geometry, not at a reference's position.

Copying (or averaging) reference positions cannot do better than the reference spacing. With
the camera intrinsics known, two references A and B at different known positions fix a metric
frame: their relative pose (essential matrix) scaled by the distance between their positions
triangulates the points they share; the query's 2D matches to those points give its pose in A's
frame (PnP); and the known vector from A to B maps that frame onto the map.

Assumptions, stated where they matter: cameras are roughly upright (the ground plane is A's x-z
plane) and at about the same height; the map's (x, y) is a right-handed frame seen from above
(x east, y north), or ``left_handed`` when its y axis points the other way (image-like maps).
Each placement is checked against the cluster estimate it refines; placements that disagree
are dropped, and the result is the median of the survivors.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from core.angles import circular_median, wrap
from core.config import Conf
from core.pairframes import FrameSettings, PairFrame, PairFrames
from core.types import Features


class PlacementConfig(Conf):
    max_pairs: int = 12  # reference pairs tried in all
    anchors: int = 4  # the references with most inliers that may serve as A
    partners: int = 4  # references tried as B for each A
    enough: int = 3  # stop after this many placements agree with the estimate
    min_points: int = 12  # triangulated points, and PnP inliers, for a placement to count
    min_baseline: float = 0.3  # map units between A and B: too short cannot scale the frame
    max_baseline: float = 15.0
    max_shift: float = 9.0  # L1 from the estimate being refined; farther means a bad pose
    essential_px: float = 2.0  # MAGSAC threshold for the A-B essential matrix
    pnp_px: float = 4.0  # PnP RANSAC reprojection threshold
    # 2D-3D correspondences and PnP inliers for a placement to count (None: min_points, which
    # also decides what a stored frame holds, core/pairframes.py).
    pnp_min_inliers: int | None = Field(None, ge=6)
    left_handed: bool = False
    # Partners per reference whose pair frames a map stores (core/pairframes.py): the pairs a
    # query tries are then read, not matched and solved (most pairs tried are among them).
    frame_partners: int = Field(6, ge=0, le=16)
    # A query no pair places: one PnP against the points of all its anchor's frames it tried
    # (BENCHMARKS.md section 24).
    pooled: bool = False
    # "pose": one PnP against the map's triangulated points (core/geometry.py) where the map
    # has them, else the pairs; "pairs": this module's pairwise geometry per query;
    # "pose-only": no pairwise fallback. "pairs" by default: on the Getty map's own held-out
    # positions the pose placed a quarter of the views and moved those away from the truth,
    # the pairs placed them better (BENCHMARKS.md, section 12).
    method: Literal["pose", "pairs", "pose-only"] = "pairs"

    def frame_settings(self) -> FrameSettings:
        return FrameSettings(
            self.min_points, self.essential_px, self.min_baseline, self.max_baseline
        )


@dataclass(frozen=True)
class Link:
    """The verified matches between the query and one reference of the winning place."""

    index: int  # the reference's row in the map
    query_idx: np.ndarray  # (M,) query keypoint indices of the inliers
    ref_idx: np.ndarray  # (M,) reference keypoint indices of the inliers

    @property
    def inliers(self) -> int:
        return len(self.query_idx)


@dataclass
class Placement:
    x: float
    y: float
    # The camera's heading (radians, map frame: core/angles.py), the circular median of the
    # placements'. A by-product of each PnP: the query's rotation in A's frame, turned onto
    # the map as its position is.
    heading: float
    placements: list[tuple[float, float, int]] = field(default_factory=list)  # x, y, PnP inliers
    pairs_tried: int = 0


def place_query(
    query: Features,
    query_k: np.ndarray,
    links: Sequence[Link],
    frames: PairFrames,
    positions: np.ndarray,
    around: tuple[float, float],
    conf: PlacementConfig | None = None,
    similar: Callable[[int, np.ndarray], np.ndarray | None] | None = None,
    hidden: np.ndarray | None = None,
) -> Placement | None:
    """The query's (x, y) from pairs of linked references, or None when no pair gives one.

    ``frames(a, b)`` is A's frame of the pair (core/pairframes.py: stored with the map or
    solved; ``frames.partners(a)`` the stored partners of A), ``positions`` the map's, both
    indexed by ``Link.index``; ``query_k`` is the query's intrinsic matrix; ``around`` is the
    estimate being refined; ``similar(i, among)`` optionally gives the global similarity of
    the references ``among`` (map rows near ``i``) to reference ``i``; ``hidden`` (bool per
    reference) marks references that must not serve as B (held-out positions).
    """
    conf = conf or PlacementConfig()
    pairs = _pairs(
        links, positions, similar or (lambda _i, _among: None), conf, hidden, frames.partners
    )
    found: list[tuple[float, float, int]] = []
    turns: list[tuple[int, float]] = []  # per placement: A, the query's turn from A's view
    implied: dict[int, dict[int, float]] = defaultdict(dict)  # A -> B -> A's heading
    tried: dict[int, list[tuple[Link, Link, PairFrame]]] = defaultdict(list)
    for a, b in pairs:
        frame = frames(a.index, b.index)
        if frame is None:
            continue
        tried[a.index].append((a, b, frame))
        implied[a.index][b.index] = _anchor_heading(
            frame.partner_centre, positions, a.index, b.index, conf
        )
        got = _place_in_frame(query, query_k, a, b, frame, positions, conf)
        if got is None:
            continue
        x, y, support, turn = got
        if abs(x - around[0]) + abs(y - around[1]) <= conf.max_shift:
            found.append((x, y, support))
            turns.append((a.index, turn))
            if len(found) >= conf.enough:
                break
    anchors: dict[int, float] = {}  # A -> A's heading, each computed once

    def heading_of(a: int) -> float:
        if a not in anchors:
            anchors[a] = _median_heading(a, implied[a], frames, positions, conf, hidden)
        return anchors[a]

    for a_idx, its_frames in tried.items() if conf.pooled and not found else ():
        if len(its_frames) < 2:  # one frame: the pair already failed
            continue
        got = _place_pooled(query, query_k, its_frames, positions, heading_of(a_idx), conf)
        if got is not None and abs(got[0] - around[0]) + abs(got[1] - around[1]) <= conf.max_shift:
            found.append(got[:3])
            turns.append((a_idx, got[3]))
            break
    if not found:
        return None
    xs, ys = np.array([f[0] for f in found]), np.array([f[1] for f in found])
    # A query's heading is its anchor's plus its turn from the anchor's view. One pair's
    # translation direction can be off by tens of degrees, which moves a placement near A
    # little but its heading as much: A's heading is the median of all its frames'.
    sense = -1.0 if conf.left_handed else 1.0
    headings = [wrap(heading_of(a) - sense * turn) for a, turn in turns]
    return Placement(
        float(np.median(xs)), float(np.median(ys)), circular_median(headings), found, len(pairs)
    )


def _anchor_heading(
    centre_b: np.ndarray, positions: np.ndarray, a: int, b: int, conf: PlacementConfig
) -> float:
    """A's heading in the map (radians) as the pair frame (A, B) implies it, given B's camera
    centre in A's frame: the map direction from A to B, turned back by the angle at which A's
    camera sees B's centre."""
    seen_at = math.atan2(centre_b[0], centre_b[2])  # from A's forward axis towards its right
    v = positions[b].astype(np.float64) - positions[a].astype(np.float64)
    sense = -1.0 if conf.left_handed else 1.0
    return wrap(math.atan2(v[1], v[0]) + sense * seen_at)


def _median_heading(
    a: int,
    implied: dict[int, float],
    frames: PairFrames,
    positions: np.ndarray,
    conf: PlacementConfig,
    hidden: np.ndarray | None,
) -> float:
    """A's heading: the circular median of what its frames imply, those this query tried
    (``implied``, partner -> heading) and those stored with A (not hidden ones)."""
    more = dict(implied)
    for b in frames.partners(a) or []:
        if b in more or (hidden is not None and hidden[b]):
            continue
        centre = frames.partner_centre(a, b)  # the pose alone: no points read
        if centre is not None:
            more[b] = _anchor_heading(centre, positions, a, b, conf)
    return circular_median(list(more.values()))


def _pairs(
    links: Sequence[Link],
    positions: np.ndarray,
    similar: Callable[[int, np.ndarray], np.ndarray | None],
    conf: PlacementConfig,
    hidden: np.ndarray | None = None,
    stored: Callable[[int], list[int] | None] = lambda _i: None,
) -> list[tuple[Link, Link]]:
    """(A, B) to try: A among the strongest links; B first among the other linked references
    (those whose frame with A is stored first, then by strength), then any map reference near
    A, most similar to A first (B must share points with A, not necessarily with the query; of
    the views at a nearby position, the one facing A's way).
    ``stored(a)``: A's stored partners, the most similar references in range (core/pairframes
    ``partners_of``), which spare reading the similarities of every reference near A when
    enough of them are left after the linked and hidden ones."""
    by_strength = sorted(links, key=lambda lk: -lk.inliers)
    linked = {lk.index for lk in links}
    pairs = []
    for a in by_strength[: conf.anchors]:
        baseline = np.hypot(*(positions - positions[a.index]).T)
        in_range = (baseline >= conf.min_baseline) & (baseline <= conf.max_baseline)
        if hidden is not None:
            in_range &= ~hidden
        partners = [b for b in by_strength if b is not a and in_range[b.index]]
        # Linked partners whose frame with A the map stores first (a read, not a solve; the
        # same accuracy on the map's held-out positions: BENCHMARKS.md section 24).
        held_by_a = stored(a.index)
        held = set(held_by_a or [])
        partners.sort(key=lambda b: b.index not in held and a.index not in (stored(b.index) or []))
        wanted = conf.partners - len(partners)
        if wanted > 0:
            near = _stored_near(held_by_a, linked, in_range, wanted, conf.frame_partners)
            if near is None:
                nearby = np.flatnonzero(in_range)
                sim = similar(a.index, nearby)
                key = -sim if sim is not None else baseline[nearby]
                order = nearby[np.argsort(key, kind="stable")]
                near = [int(j) for j in order if int(j) not in linked][:wanted]
            empty = np.zeros(0, np.int64)
            partners += [Link(j, empty, empty) for j in near]
        pairs += [(a, b) for b in partners[: conf.partners]]
    return pairs[: conf.max_pairs]


def _stored_near(
    held: list[int] | None, linked: set[int], in_range: np.ndarray, wanted: int, stored_max: int
) -> list[int] | None:
    """The first ``wanted`` of A's stored partners that are neither linked nor out of range
    (hidden), or None when the stored ones cannot tell: fewer left than wanted while the
    stored list may have been cut (it holds every reference in range when shorter)."""
    if held is None:
        return None
    left = [j for j in held if j not in linked and in_range[j]]
    if len(left) < wanted and len(held) >= stored_max:
        return None
    return left[:wanted]


def _place_in_frame(
    query: Features,
    query_k: np.ndarray,
    a: Link,
    b: Link,
    frame: PairFrame,
    positions: np.ndarray,
    conf: PlacementConfig,
) -> tuple[float, float, int, float] | None:
    """The query's (x, y) and PnP inliers from its matches to A and B through the points of
    A's frame of the pair, mapped onto the map by the known vector from A to B, and the
    query's turn from A's view (radians, from A's forward axis towards its right)."""
    q_to_pt = _correspondences(a, b, frame)
    needed = conf.pnp_min_inliers or conf.min_points
    if len(q_to_pt) < needed:
        return None
    q_idx = np.fromiter(q_to_pt.keys(), np.int64)
    obj = frame.points[np.fromiter(q_to_pt.values(), np.int64)]
    img = query.keypoints[q_idx].astype(np.float64)
    solved = pnp_ransac(obj, img, query_k, conf.pnp_px, needed)
    if solved is None:
        return None
    rq, tvec, inl = solved
    centre_q = -rq.T @ tvec
    centre_b = frame.partner_centre
    # Ground-plane coordinates in A's frame: (x right, z forward).
    u = np.array([centre_b[0], centre_b[2]])
    c = np.array([centre_q[0], centre_q[2]])
    uu = float(u @ u)
    if uu < 1e-12:
        return None
    along = float(c @ u) / uu
    across = float(u[0] * c[1] - u[1] * c[0]) / uu
    pos_a = positions[a.index].astype(np.float64)
    v = positions[b.index].astype(np.float64) - pos_a
    perp = np.array([-v[1], v[0]]) * (-1.0 if conf.left_handed else 1.0)
    xy = pos_a + along * v + across * perp
    forward = rq[2]  # the query camera's z axis in A's frame
    return float(xy[0]), float(xy[1]), len(inl), math.atan2(forward[0], forward[2])


def _correspondences(a: Link, b: Link, frame: PairFrame) -> dict[int, int]:
    """The query's 2D-3D correspondences through A and through B: query keypoint -> row of
    ``frame.points``, one per query keypoint."""
    # 3D point per keypoint of A and of B (-1: none).
    a_to_pt = np.full(len(frame.mine) and int(frame.mine.max()) + 1, -1, np.int64)
    b_to_pt = np.full(len(frame.theirs) and int(frame.theirs.max()) + 1, -1, np.int64)
    a_to_pt[frame.mine] = np.arange(len(frame.mine))
    b_to_pt[frame.theirs] = np.arange(len(frame.theirs))
    q_to_pt: dict[int, int] = {}
    for link, lookup in ((a, a_to_pt), (b, b_to_pt)):
        for qi, ri in zip(link.query_idx, link.ref_idx, strict=True):
            if ri < len(lookup) and lookup[ri] >= 0:
                q_to_pt.setdefault(int(qi), int(lookup[ri]))
    return q_to_pt


def pnp_ransac(
    obj: np.ndarray, img: np.ndarray, k: np.ndarray, px: float, min_inliers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """World-to-camera rotation, translation and inlier indices of a camera that sees the 3D
    points ``obj`` at the pixels ``img`` (OpenCV's PnP RANSAC with SQPnP), or None with fewer
    than ``min_inliers`` inliers. (poselib's LO-RANSAC placed the map's held-out views a little
    worse: BENCHMARKS.md, section 21.)"""
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            obj, img, k, None, reprojectionError=px, iterationsCount=1000,
            flags=cv2.SOLVEPNP_SQPNP,
        )  # fmt: skip
    except cv2.error:  # degenerate point sets
        return None
    if not ok or inl is None or len(inl) < min_inliers:
        return None
    rot, _ = cv2.Rodrigues(rvec)
    return rot, tvec.ravel(), inl.ravel()


def _place_pooled(
    query: Features,
    query_k: np.ndarray,
    tried: list[tuple[Link, Link, PairFrame]],
    positions: np.ndarray,
    heading_a: float,
    conf: PlacementConfig,
) -> tuple[float, float, int, float] | None:
    """The query's (x, y), PnP inliers and turn from A's view by one PnP against the points
    of all A's frames it ``tried`` (each in A's camera at the scale of its known baseline),
    for a query no single pair shares enough points with. A's frame is turned onto the map
    by A's heading (``heading_a``, radians), not by one partner's direction."""
    q_to_xyz: dict[int, np.ndarray] = {}
    for a, b, frame in tried:
        for qi, row in _correspondences(a, b, frame).items():
            q_to_xyz.setdefault(qi, frame.points[row])
    needed = conf.pnp_min_inliers or conf.min_points
    if len(q_to_xyz) < needed:
        return None
    img = query.keypoints[np.fromiter(q_to_xyz.keys(), np.int64)].astype(np.float64)
    solved = pnp_ransac(np.array(list(q_to_xyz.values())), img, query_k, conf.pnp_px, needed)
    if solved is None:
        return None
    rq, tvec, inl = solved
    centre = -rq.T @ tvec  # in A's frame: x right, z forward
    sense = -1.0 if conf.left_handed else 1.0
    bearing = heading_a - sense * math.atan2(centre[0], centre[2])
    reach = math.hypot(centre[0], centre[2])
    pos_a = positions[tried[0][0].index].astype(np.float64)
    forward = rq[2]
    x, y = pos_a + reach * np.array([math.cos(bearing), math.sin(bearing)])
    return float(x), float(y), len(inl), math.atan2(forward[0], forward[2])
