"""A photo set: 2 to 8 photos taken at (about) one position, localised as one answer.

Each photo runs the single-photo pipeline (core/localiser.py: shortlist, match, verify, the
fine stage and placement), so nothing is lost against sending the photos one by one. Their
evidence is then pooled: the coarse candidates of every photo go through the job's estimator
(core/estimation.py) as one shortlist, so a place seen by several photos adds up their inliers
and outranks a stray view of one. The set's position is the weighted median (L1, the score's
metric) of the answers of the photos that agree with that place, each weighed by its own
evidence there. A photo that localised on its own elsewhere is outvoted when more photos
localised at the set's place; otherwise the set declines, with the reason said.

Yaws, where given (degrees from the first photo, turning the way the map's headings do: from
its +x axis towards its +y axis, counter-clockwise on a map with y north), give the set its
heading: the first photo's, as the agreeing photos that placement gave a heading
(core/placement.py) put it, each one's heading less its yaw (their weighted circular median).
Without yaws the set's heading is the first photo's own, where it has one. Yaws do not move
the position: on the map's held-out positions, leaving out the photos whose heading less
yaw strays from the others' gained nothing at any tolerance from 20 to 90 degrees, as
placement's headings scatter too much (BENCHMARKS.md section 23).

The pooling adds no other parameter: the place radius and the inlier floor are the job's
estimator settings (measured on single photos, core/estimation.py ClusterConf), and photos
"disagree" exactly when the estimator would call their places distinct (farther than twice the
radius). The confidence is the pooled raw confidence through the map's set curve, fitted on
sets of its own held-out positions' views (core/setfit.py, ``featureloc map fit --sets``); a map
that measured no sets uses its single-photo curve (core/heldout.py): a conservative reading,
since a set's evidence is stronger than the same raw figure from one photo.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.angles import circular_median, wrap
from core.camera import Camera
from core.errors import InputError
from core.estimation import ESTIMATORS, ClusterConf, weighted_median
from core.types import CandidateResult, Estimate, LocalisationResult

if TYPE_CHECKING:  # the pipeline's models stay out of what the API and the client import
    from core.localiser import LocaliseOptions, Localiser

MIN_PHOTOS = 2
MAX_PHOTOS = 8


@dataclass
class SetResult:
    """One answer for a photo set, and each photo's own result (its evidence, kept)."""

    estimate: Estimate
    photos: list[LocalisationResult]
    timings: dict[str, float]
    reason: str | None = None  # why the set declined, when it did for a stated cause
    # The photos (0-based, in the set's order) whose answers placed the set.
    agreeing: list[int] = field(default_factory=list)
    # Whether the confidence went through a calibration curve of the map: its set curve
    # (core/setfit.py), else its single-photo coarse curve.
    calibrated: bool = False

    def as_result(self) -> LocalisationResult:
        """The set's answer in the shape of one photo's: its estimate and timings, and every
        photo's candidates marked with their photo (what a job stores and an evaluation
        scores). The inliers are left out: each photo's own result keeps its own."""
        candidates = [
            dataclasses.replace(c, photo=n)
            for n, photo in enumerate(self.photos)
            for c in photo.candidates
        ]
        return dataclasses.replace(
            self.photos[0],
            estimate=self.estimate,
            candidates=candidates,
            timings=self.timings,
            inliers=[],
            calibrated=self.calibrated,
        )


def check_set(count: int, yaws: Sequence[float] | None, cameras: Sequence[object] | None) -> None:
    """InputError unless ``count`` photos make a set and the yaws and cameras, when given,
    name one value per photo (the first photo's yaw is the reference: 0)."""
    if not MIN_PHOTOS <= count <= MAX_PHOTOS:
        raise InputError(f"a photo set has {MIN_PHOTOS} to {MAX_PHOTOS} photos, got {count}")
    if yaws is not None:
        if len(yaws) != count:
            raise InputError(f"{len(yaws)} yaw(s) for {count} photos: give one per photo")
        bad = [y for y in yaws if not (isinstance(y, int | float) and math.isfinite(y))]
        if bad:
            raise InputError(f"yaws must be finite numbers of degrees, got {bad!r}")
    if cameras is not None and len(cameras) != count:
        raise InputError(f"{len(cameras)} camera(s) for {count} photos: give one per photo")


def localise_set(
    localiser: Localiser,
    images: Sequence[np.ndarray],
    options: LocaliseOptions | None = None,
    *,
    yaws: Sequence[float] | None = None,
    cameras: Sequence[Camera | None] | None = None,
    hidden: np.ndarray | None = None,
    calibrated: bool = True,
) -> SetResult:
    """Localise a photo set (BGR images) as one answer. ``cameras`` gives each photo's own
    intrinsics (None: the job's ``query_camera`` or the map's); ``yaws`` (degrees from the
    first photo) give the set's heading (see the module's docstring)."""
    from core.localiser import LocaliseOptions, _calibrated

    check_set(len(images), yaws, cameras)
    opts = options or LocaliseOptions()
    photos = []
    for i, image in enumerate(images):
        camera = cameras[i] if cameras is not None else None
        photo_opts = opts if camera is None else opts.model_copy(update={"query_camera": camera})
        photos.append(localiser.localise(image, photo_opts, hidden, calibrated))
    t0 = time.perf_counter()
    result = pool_photos(photos, opts, yaws)
    training, _ = localiser.map.fit
    # The map's set curve (core/setfit.py) where it measured sets, else the single-photo one.
    curves = training.get("calibration", {})
    curve = curves.get("set", curves.get("coarse"))
    if calibrated and curve is not None:
        pooled = _calibrated(result.estimate, curve, training["localised_probability"])
        # A set declined for disagreement stays declined, whatever its calibrated figure.
        localised = pooled.localised and result.reason is None
        result.estimate = dataclasses.replace(pooled, localised=localised)
    result.calibrated = calibrated and curve is not None
    timings: dict[str, float] = {}
    for p in photos:
        for stage, seconds in p.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    timings["pool"] = time.perf_counter() - t0
    result.timings = timings
    return result


def pool_photos(
    photos: Sequence[LocalisationResult],
    opts: LocaliseOptions,
    yaws: Sequence[float] | None = None,
) -> SetResult:
    """One estimate from several photos' results, ``yaws`` in degrees from the first photo
    (see the module's docstring)."""
    conf = opts.estimator_config()
    defaults = ClusterConf()
    radius = float(getattr(conf, "radius", defaults.radius))
    floor = float(getattr(conf, "inlier_floor", defaults.inlier_floor))
    pooled = [c for p in photos for c in p.candidates if c.stage == "coarse"]
    estimate = ESTIMATORS[opts.estimator](pooled, conf)
    estimate = dataclasses.replace(estimate, method=f"set:{estimate.method}")
    if not estimate.localised or estimate.x is None or estimate.y is None:
        return SetResult(estimate, list(photos), {}, "no place has enough evidence in the set")
    place = (estimate.x, estimate.y)

    agreeing, points, weights, elsewhere = [], [], [], []
    for i, p in enumerate(photos):
        own = p.estimate
        if own.x is None or own.y is None:
            continue
        distance = abs(own.x - place[0]) + abs(own.y - place[1])
        if own.localised and distance > 2 * radius:
            elsewhere.append((i, own.x, own.y, distance))
        weight = evidence_near(p.candidates, place, radius, floor)
        if distance <= radius and weight > 0:
            agreeing.append(i)
            points.append((own.x, own.y))
            weights.append(weight)
    confident_here = sum(photos[i].estimate.localised for i in agreeing)
    if elsewhere and len(elsewhere) >= confident_here:
        # No majority among the photos that localised on their own: a stray view is
        # outvoted, but a set split between places is a contradiction, not an answer.
        i, x, y, distance = elsewhere[0]
        reason = (
            f"the photos disagree: photo {i + 1} localised at ({x:.1f}, {y:.1f}), "
            f"{distance:.1f} from the place the set's evidence favours "
            f"({place[0]:.1f}, {place[1]:.1f}), which {confident_here} photo(s) localised at"
        )
        declined = dataclasses.replace(estimate, localised=False, method="set:disagree")
        return SetResult(declined, list(photos), {}, reason, agreeing)
    heading = photos[0].estimate.heading if 0 in agreeing else None
    if yaws is not None and agreeing:
        heading = first_heading(
            [photos[i].estimate.heading for i in agreeing], [yaws[i] for i in agreeing], weights
        )
    if agreeing:
        xy, w = np.array(points, np.float64), np.array(weights, np.float64)
        x, y = weighted_median(xy[:, 0], w), weighted_median(xy[:, 1], w)
        estimate = dataclasses.replace(estimate, x=x, y=y, heading=heading)
    return SetResult(estimate, list(photos), {}, None, agreeing)


def first_heading(
    headings: Sequence[float | None], yaws: Sequence[float], weights: Sequence[float]
) -> float | None:
    """The first photo's heading (radians, map frame) as the photos with a heading put it:
    the weighted circular median of each one's heading less its yaw (degrees), or None when
    none has a heading."""
    implied = [
        (wrap(h - math.radians(yaw)), w)
        for h, yaw, w in zip(headings, yaws, weights, strict=True)
        if h is not None
    ]
    if not implied:
        return None
    return circular_median([a for a, _ in implied], [w for _, w in implied])


def evidence_near(
    candidates: Sequence[CandidateResult], place: tuple[float, float], radius: float, floor: float
) -> float:
    """A photo's coarse evidence (inliers above ``floor``, as core.estimation pools them) at
    the references within ``radius`` (L1) of ``place``."""
    return float(
        sum(
            max(c.inliers - floor, 0.0)
            for c in candidates
            if c.stage == "coarse"
            and abs(c.position[0] - place[0]) + abs(c.position[1] - place[1]) <= radius
        )
    )
