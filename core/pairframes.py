"""Pair frames: the two-view geometry of nearby reference pairs, computed once and reused by
every query placed with them (core/placement.py).

A pair frame of references A and B is all that placement needs from the pair before the query
comes in: the matches A and B share, verified by an essential matrix (MAGSAC) and triangulated
in A's camera frame scaled by the known distance between their positions, and the pose of B in
that frame. Matching two references and estimating their relative pose costs tens of
milliseconds a pair, most of a query's placement; with the frame at hand a pair costs the query
one PnP.

A map stores the frames of each reference with its partners (``partners_of``: the references
within the placement's baseline range that look most like it) under ``pairframes/``, built in
the map's geometry steps (core/mapbuild.add_geometry) in the flat format of core/flatfile.py and
shared by a host's workers through the page cache. A pair not stored is computed when a query
needs it. Either way a pair is solved once, in one order (the reference with the smaller id
first), and read in either frame, so a stored frame and a computed one are the same. Stored
frames serve only jobs whose matcher, frame settings and camera are the ones they were built
with (``FrameSettings.key``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.flatfile import read_rows, write_arrays
from core.parts import PART_SUFFIX, PartIndex
from core.types import FeatureLookup, Features, Matches

PAIRFRAMES_DIR = "pairframes"


@dataclass(frozen=True)
class FrameSettings:
    """What a frame's content depends on besides the two references' features."""

    min_points: int  # triangulated points for a pair to count
    essential_px: float  # MAGSAC threshold of the pair's essential matrix, in pixels
    min_baseline: float  # the partners' distance range (``partners_of``)
    max_baseline: float

    def key(self, matcher: str, matcher_conf: dict) -> str:
        """The identity stored with a part: frames serve only jobs with the same key."""
        return json.dumps(
            {"matcher": matcher, "matcher_conf": matcher_conf, **self.__dict__},
            sort_keys=True,
            default=str,
        )


@dataclass(frozen=True)
class PairFrame:
    """Two references' shared points in the first one's camera frame (map units)."""

    mine: np.ndarray  # (M,) keypoint indices of the frame's reference
    theirs: np.ndarray  # (M,) keypoint indices of the partner
    points: np.ndarray  # (M, 3) float64, in the frame's camera (x right, y down, z forward)
    rotation: np.ndarray  # (3, 3): x_partner = rotation @ x_mine + translation
    translation: np.ndarray  # (3,) map units

    @property
    def partner_centre(self) -> np.ndarray:
        """The partner's camera centre in this frame."""
        return -self.rotation.T @ self.translation

    def flipped(self) -> PairFrame:
        """The same pair in the partner's frame (points kept at the stored precision, as
        ``solve_frame`` keeps them)."""
        return PairFrame(
            self.theirs,
            self.mine,
            _stored_precision(self.points @ self.rotation.T + self.translation),
            self.rotation.T,
            -self.rotation.T @ self.translation,
        )


MatchFn = Callable[[Features, Features], Matches]


def solve_frame(
    fa: Features,
    fb: Features,
    ka: np.ndarray,
    kb: np.ndarray,
    baseline: float,
    match: MatchFn,
    settings: FrameSettings,
) -> PairFrame | None:
    """A's frame of the pair (A, B) ``baseline`` map units apart, or None when they share too
    few verified points in front of both cameras."""
    ab = match(fa, fb).indices
    if len(ab) < settings.min_points:
        return None
    # Normalised image coordinates, so A and B may come from different cameras.
    pa = _normalise(fa.keypoints[ab[:, 0]], ka)
    pb = _normalise(fb.keypoints[ab[:, 1]], kb)
    focal = float(np.mean([ka[0, 0], ka[1, 1], kb[0, 0], kb[1, 1]]))
    pose = _relative_pose(pa, pb, settings.essential_px / focal)
    if pose is None:
        return None
    rot, t, good = pose
    if good.sum() < settings.min_points:
        return None
    t = t * baseline  # A's frame in map units: x_B = R x_A + t
    xh = cv2.triangulatePoints(
        np.hstack([np.eye(3), np.zeros((3, 1))]), np.hstack([rot, t[:, None]]),
        pa[good].T, pb[good].T,
    )  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore"):
        pts = (xh[:3] / xh[3]).T
    depth_a, depth_b = pts[:, 2], (pts @ rot.T + t)[:, 2]
    ok = (depth_a > 0) & (depth_b > 0) & (depth_a < 500 * baseline)
    if ok.sum() < settings.min_points:
        return None
    kept = ab[good][ok]
    return PairFrame(
        kept[:, 0].astype(np.int32), kept[:, 1].astype(np.int32), _stored_precision(pts[ok]),
        rot, t,
    )  # fmt: skip


def _stored_precision(points: np.ndarray) -> np.ndarray:
    """Points rounded to the float32 they are stored as, so a stored frame and a solved one
    give a query the same answer to the last bit."""
    return points.astype(np.float32).astype(np.float64)


def _normalise(points: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) to normalised image coordinates (K^-1 applied)."""
    return cv2.undistortPoints(points.reshape(-1, 1, 2).astype(np.float64), k, None).reshape(-1, 2)


def _relative_pose(
    pa: np.ndarray, pb: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """From normalised points: R, unit t (x_B = R x_A + t) and the inlier mask of points in
    front of both cameras. ``threshold`` is in normalised units (pixels / focal length)."""
    eye = np.eye(3)
    try:
        e, mask = cv2.findEssentialMat(
            pa, pb, eye, method=cv2.USAC_MAGSAC, prob=0.999, threshold=threshold
        )
        if e is None or mask is None or e.shape[0] < 3:
            return None
        _, rot, t, good = cv2.recoverPose(e[:3], pa, pb, eye, mask=mask.copy())
    except cv2.error:
        return None
    return rot, t.ravel(), good.ravel() > 0


def partners_of(
    i: int,
    positions: np.ndarray,
    similar: Callable[[int, np.ndarray], np.ndarray | None],
    count: int,
    min_baseline: float,
    max_baseline: float,
) -> list[int]:
    """Up to ``count`` references within the baseline range of ``i``, those that look most like
    it first (``similar``: global similarity; nearest first without it)."""
    baseline = np.hypot(*(positions - positions[i]).T)
    near = np.flatnonzero((baseline >= min_baseline) & (baseline <= max_baseline))
    if not len(near):
        return []
    sim = similar(i, near)
    order = np.argsort(-sim if sim is not None else baseline[near], kind="stable")
    return [int(j) for j in near[order[:count]]]


class PairFrames:
    """The frames one job (or one build step) uses: read from the map's store where it holds
    them under the same key, else solved and kept for the rest of the job."""

    def __init__(
        self,
        features: FeatureLookup,
        positions: np.ndarray,
        ids: Sequence[str],
        ref_k: Callable[[int], np.ndarray],
        match: MatchFn,
        settings: FrameSettings,
        stored: PairFrameSet | None = None,
        key: str = "",
        index: dict[str, int] | None = None,
    ) -> None:
        self._features, self._positions, self._ids = features, positions, ids
        self._index = index if index is not None else {rid: i for i, rid in enumerate(ids)}
        self._ref_k, self._match, self._settings = ref_k, match, settings
        self._stored, self.key = stored, key
        self._solved: dict[tuple[int, int], PairFrame | None] = {}
        self.read = self.solved = 0  # frames served from the store, frames solved here

    def partners(self, i: int) -> list[int] | None:
        """The partners (map rows) whose frames with ``i`` are stored under this job's key,
        most alike first, or None where none are."""
        held = None if self._stored is None else self._stored.partners(i, self.key)
        return None if held is None else [self._index[p] for p in held if p in self._index]

    def __call__(self, a: int, b: int) -> PairFrame | None:
        """A's frame of the pair (a, b) (map rows)."""
        first, second = self.ordered(a, b)
        frame = self.canonical(first, second)
        return frame if frame is None or first == a else frame.flipped()

    def partner_centre(self, a: int, b: int) -> np.ndarray | None:
        """B's camera centre in A's frame of the pair (a, b), None where the pair gives no
        frame. A stored pair's is read from the store's in-memory poses, without its points."""
        first, second = self.ordered(a, b)
        pose = None
        if (first, second) not in self._solved and self._stored is not None:
            pose = self._stored_pose(first, second)
        if pose is None:
            frame = self(a, b)
            return None if frame is None else frame.partner_centre
        if pose[1] is None:  # stored as a pair that gives no frame
            return None
        rot, trans = pose[1]
        if first != a:  # as PairFrame.flipped turns it
            rot, trans = rot.T, -rot.T @ trans
        return -rot.T @ trans

    def _stored_pose(
        self, a: int, b: int
    ) -> tuple[bool, tuple[np.ndarray, np.ndarray] | None] | None:
        assert self._stored is not None
        for owner, other in ((a, b), (b, a)):
            held = self._stored.pose(owner, self._ids[other], self.key)
            if held is not None:
                return held
        return None

    def ordered(self, a: int, b: int) -> tuple[int, int]:
        """The pair in the order it is solved and stored in: the smaller id first."""
        return (a, b) if self._ids[a] <= self._ids[b] else (b, a)

    def canonical(self, a: int, b: int) -> PairFrame | None:
        """The frame of an ``ordered`` pair, in its first reference's camera."""
        if (a, b) in self._solved:
            return self._solved[(a, b)]
        if self._stored is not None:
            for owner, other in ((a, b), (b, a)):  # stored with either reference
                held, frame = self._stored.lookup(owner, self._ids[other], self.key)
                if held:
                    self.read += 1
                    return frame
        baseline = float(np.hypot(*(self._positions[b] - self._positions[a])))
        frame = solve_frame(
            self._features[a], self._features[b], self._ref_k(a), self._ref_k(b), baseline,
            self._match, self._settings,
        )  # fmt: skip
        self.solved += 1
        self._solved[(a, b)] = frame
        return frame


# --- storage --------------------------------------------------------------------------


def write_pair_frames(
    map_path: Path, key: str, items: Sequence[tuple[str, Sequence[tuple[str, PairFrame | None]]]]
) -> Path | None:
    """Store, as one new part, each reference's frames (by id) with its partners (by id; None
    for a pair that gave no frame, so it is not solved again). Each frame is the pair's
    ``PairFrames.canonical`` one, whichever reference it is stored with."""
    if not items:
        return None
    pairs = [(pid, f) for _, frames in items for pid, f in frames]
    frames = [f for _, f in pairs if f is not None]
    counts = np.array([0 if f is None else len(f.mine) for _, f in pairs], np.int64)
    eye = np.eye(3)
    arrays = {
        "key": np.array(key),
        "ids": np.array([rid for rid, _ in items], dtype=str),
        "ref_offsets": np.concatenate([[0], np.cumsum([len(fs) for _, fs in items])]).astype(
            np.int64
        ),
        "partner_ids": np.array([pid for pid, _ in pairs], dtype=str).reshape(len(pairs)),
        "solved": np.array([f is not None for _, f in pairs], bool),
        "rotations": np.array([eye if f is None else f.rotation for _, f in pairs]).reshape(
            -1, 3, 3
        ),
        "translations": np.array(
            [np.zeros(3) if f is None else f.translation for _, f in pairs]
        ).reshape(-1, 3),
        "point_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "mine": np.concatenate([np.zeros(0, np.int32)] + [f.mine for f in frames]),
        "theirs": np.concatenate([np.zeros(0, np.int32)] + [f.theirs for f in frames]),
        "points": np.concatenate([np.zeros((0, 3))] + [f.points for f in frames]).astype(
            np.float32
        ),
    }
    directory = Path(map_path) / PAIRFRAMES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    # Named in time order: a reference rebuilt later is read from its newest part.
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
    return write_arrays(directory / name, arrays)


class PairFrameSet(PartIndex):
    """A map's stored pair frames: ``lookup(i, partner_id, key)``, each in the camera of the
    pair's reference with the smaller id."""

    in_memory = ("key", "ref_offsets", "partner_ids", "solved", "rotations", "translations",
                 "point_offsets")  # fmt: skip

    def __init__(self, map_path: Path, index: dict[str, int]) -> None:
        super().__init__(Path(map_path) / PAIRFRAMES_DIR, index)

    def partners(self, i: int, key: str | None = None) -> tuple[str, ...] | None:
        """The partner ids stored with reference ``i`` (under ``key``, when given), None where
        it has no entry."""
        where = self.locate(i)
        if where is None:
            return None
        a, row = where
        if key is not None and str(a["key"]) != key:
            return None
        lo, hi = int(a["ref_offsets"][row]), int(a["ref_offsets"][row + 1])
        return tuple(str(p) for p in a["partner_ids"][lo:hi])

    def _entry(self, i: int, partner_id: str, key: str) -> tuple[dict, int] | None:
        """The part and row of the pair's entry stored with ``i`` under ``key``, or None."""
        where = self.locate(i)
        if where is None:
            return None
        a, row = where
        if str(a["key"]) != key:
            return None
        lo, hi = int(a["ref_offsets"][row]), int(a["ref_offsets"][row + 1])
        hits = np.flatnonzero(a["partner_ids"][lo:hi] == partner_id)
        return (a, lo + int(hits[0])) if len(hits) else None

    def pose(
        self, i: int, partner_id: str, key: str
    ) -> tuple[bool, tuple[np.ndarray, np.ndarray] | None] | None:
        """As ``lookup``, only the frame's rotation and translation (held in memory): None
        where the pair is not stored with ``i``."""
        entry = self._entry(i, partner_id, key)
        if entry is None:
            return None
        a, p = entry
        if not a["solved"][p]:
            return True, None
        rot = np.array(a["rotations"][p], np.float64)
        return True, (rot, np.array(a["translations"][p], np.float64))

    def lookup(self, i: int, partner_id: str, key: str) -> tuple[bool, PairFrame | None]:
        """Whether the frame of reference ``i`` and ``partner_id`` is stored with ``i`` under
        ``key``, and the frame (None: the pair was solved and gave none)."""
        entry = self._entry(i, partner_id, key)
        if entry is None:
            return False, None
        a, p = entry
        if not a["solved"][p]:
            return True, None
        s, e = int(a["point_offsets"][p]), int(a["point_offsets"][p + 1])
        return True, PairFrame(
            read_rows(a["mine"], s, e),
            read_rows(a["theirs"], s, e),
            read_rows(a["points"], s, e).astype(np.float64),
            np.array(a["rotations"][p], np.float64),
            np.array(a["translations"][p], np.float64),
        )
