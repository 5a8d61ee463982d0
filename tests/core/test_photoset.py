"""Photo sets (core/photoset.py): several photos from one spot, one pooled answer."""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest

from cli.synthetic import make_world, render_view
from core.errors import InputError
from core.localiser import LocaliseOptions, Localiser
from core.mapstore import MapStore
from core.photoset import MAX_PHOTOS, check_set, localise_set, pool_photos
from core.types import CandidateResult, Estimate, LocalisationResult


def _candidate(ref: str, xy: tuple[float, float], inliers: int) -> CandidateResult:
    return CandidateResult(ref, xy, 0, 1.0, 500, 500, inliers + 20, inliers, 0.5)


def _photo(*candidates: CandidateResult, at=None, localised=False) -> LocalisationResult:
    x, y = at if at is not None else (None, None)
    return LocalisationResult(Estimate(x, y, 0.5, localised, "cluster"), list(candidates), {}, {})


def test_places_seen_by_several_photos_outrank_a_stray_view() -> None:
    """One photo's strong stray view (80 inliers at P) loses to a place two other photos see
    with 60 inliers each (Q): pooled, Q has 2 x 40 evidence against P's 60."""
    p, q = (0.0, 0.0), (50.0, 50.0)
    stray = _photo(_candidate("p_1", p, 80), _candidate("q_1", q, 22))
    seen = [_photo(_candidate("q_2", q, 60), _candidate("p_2", p, 21)) for _ in range(2)]
    opts = LocaliseOptions()
    alone = pool_photos([stray, _photo()], opts).estimate
    assert (alone.x, alone.y) == p
    pooled = pool_photos([stray, *seen], opts)
    assert pooled.estimate.localised and (pooled.estimate.x, pooled.estimate.y) == q
    assert pooled.reason is None


def test_the_set_is_placed_at_the_agreeing_photos_answers() -> None:
    """Each agreeing photo's own (placed) answer votes, weighed by its evidence at the place:
    the set's position is their weighted median, not a reference's position."""
    q = (50.0, 50.0)
    photos = [
        _photo(_candidate("q_1", q, 120), at=(51.0, 49.0), localised=True),
        _photo(_candidate("q_2", q, 40), at=(58.0, 50.0), localised=True),
        _photo(_candidate("q_3", q, 90), at=(50.5, 49.5), localised=True),
    ]
    res = pool_photos(photos, LocaliseOptions())
    assert res.agreeing == [0, 1, 2]
    # Weights 100, 20 and 70 (inliers above the floor of 20): x 51.0, y 49.0, and the weak
    # photo at x 58 does not pull the answer.
    assert (res.estimate.x, res.estimate.y) == (51.0, 49.0)


@pytest.mark.parametrize(
    ("count", "yaws", "cameras", "says"),
    [
        (1, None, None, "2 to 8 photos"),
        (MAX_PHOTOS + 1, None, None, "2 to 8 photos"),
        (3, [0.0, 72.0], None, "2 yaw(s) for 3 photos"),
        (2, [0.0, float("nan")], None, "finite"),
        (2, None, [None], "1 camera(s) for 2 photos"),
    ],
)
def test_bad_sets_are_refused(count, yaws, cameras, says) -> None:
    with pytest.raises(InputError, match=re.escape(says)):
        check_set(count, yaws, cameras)


def _positions(scene: Path) -> list[tuple[float, float]]:
    rows = list(csv.DictReader((scene / "queries.csv").open()))
    return [(float(r["x"]), float(r["y"])) for r in rows]


def _views(x: float, y: float, yaws: list[float], seed: int) -> list[np.ndarray]:
    world = make_world(0)  # the scene fixture's world (generate_dataset seed 0)
    rng = np.random.default_rng(seed)
    return [render_view(world, x, y, yaw, rng=rng) for yaw in yaws]


def _error(est: Estimate, truth: tuple[float, float]) -> float:
    assert est.x is not None and est.y is not None
    return abs(est.x - truth[0]) + abs(est.y - truth[1])


@pytest.mark.integration
def test_several_views_localise_at_least_as_well_as_one(scene: Path, scene_xfeat_map) -> None:
    """Three views of one spot, 120 degrees apart: the set's answer is as good as its first
    photo's alone (summed over a few spots), and no spot the first photo localises is lost."""
    loc = Localiser(MapStore(scene_xfeat_map).open("scene"))
    opts = LocaliseOptions(top_k=20)
    single_err, set_err, single_ok, set_ok = 0.0, 0.0, 0, 0
    for k, truth in enumerate(_positions(scene)[:4]):
        views = _views(*truth, [30.0 * k, 30.0 * k + 120, 30.0 * k + 240], seed=k)
        one = loc.localise(views[0], opts).estimate
        res = localise_set(loc, views, opts, yaws=[0.0, 120.0, 240.0])
        assert len(res.photos) == 3 and all(p.candidates for p in res.photos)
        assert res.estimate.method.startswith("set:")
        single_err += _error(one, truth)
        set_err += _error(res.estimate, truth)
        single_ok += one.localised
        set_ok += res.estimate.localised
    assert set_ok >= single_ok
    assert set_err <= single_err + 1.0, (set_err, single_err)


@pytest.mark.integration
def test_a_set_whose_photos_disagree_declines_and_says_why(scene: Path, scene_xfeat_map) -> None:
    """Two photos of two distant spots, each localised on its own: the set declines, naming
    the photo that contradicts the pooled place."""
    loc = Localiser(MapStore(scene_xfeat_map).open("scene"))
    opts = LocaliseOptions(top_k=20)
    spots = _positions(scene)
    a, b = max(
        ((p, q) for p in spots for q in spots),
        key=lambda pq: abs(pq[0][0] - pq[1][0]) + abs(pq[0][1] - pq[1][1]),
    )
    # Each spot's best-localised of a few headings, so both photos are confident alone.
    photos = []
    for spot in (a, b):
        views = _views(*spot, [0.0, 90.0, 180.0, 270.0], seed=7)
        results = [loc.localise(v, opts) for v in views]
        best = max(range(4), key=lambda i: results[i].estimate.confidence)
        assert results[best].estimate.localised and _error(results[best].estimate, spot) < 9
        photos.append(views[best])
    res = localise_set(loc, photos, opts)
    assert not res.estimate.localised
    assert res.estimate.method == "set:disagree"
    assert res.reason is not None and "disagree" in res.reason


def test_a_stray_confident_photo_is_outvoted_but_a_split_set_declines() -> None:
    """Two photos localised at Q outvote one localised at P; one against one is a split."""
    p, q = (0.0, 0.0), (50.0, 50.0)
    at_p = _photo(_candidate("p_1", p, 70), at=p, localised=True)
    at_q = [_photo(_candidate(f"q_{i}", q, 60), at=q, localised=True) for i in range(2)]
    outvoted = pool_photos([at_p, *at_q], LocaliseOptions())
    assert outvoted.estimate.localised and outvoted.reason is None
    split = pool_photos([at_p, at_q[0]], LocaliseOptions())
    assert not split.estimate.localised and split.estimate.method == "set:disagree"
    assert split.reason is not None and "photos disagree" in split.reason


def _placed(ref: str, at: tuple[float, float], inliers: int, heading_deg: float | None):
    photo = _photo(_candidate(ref, (50.0, 50.0), inliers), at=at, localised=True)
    heading = None if heading_deg is None else math.radians(heading_deg)
    return dataclasses.replace(photo, estimate=dataclasses.replace(photo.estimate, heading=heading))


def test_yaws_give_the_set_its_first_photos_heading_and_leave_its_position() -> None:
    """Three photos placed near Q with headings 10, 82 and 300 degrees, told 0, 72 and 144:
    they put the first photo at 10, 10 and 156 degrees; the weighted circular median is the
    strongest photo's (156: its 180 of evidence against 2 x 40), and the position is the same
    weighted median with or without yaws. Without yaws the set's heading is the first
    photo's own; photos with no heading have no say."""
    photos = [
        _placed("q_1", (51.0, 49.0), 60, 10.0),
        _placed("q_2", (52.0, 49.0), 60, 82.0),
        _placed("q_3", (53.0, 51.0), 200, 300.0),
    ]
    opts = LocaliseOptions()
    plain = pool_photos(photos, opts)
    told = pool_photos(photos, opts, yaws=[0.0, 72.0, 144.0])
    assert plain.agreeing == told.agreeing == [0, 1, 2]
    assert (plain.estimate.x, plain.estimate.y) == (told.estimate.x, told.estimate.y) == (53, 51)
    assert math.degrees(plain.estimate.heading) == pytest.approx(10.0)
    assert math.degrees(told.estimate.heading) == pytest.approx(156.0)
    weak = [photos[0], photos[1], _placed("q_3", (53.0, 51.0), 30, 300.0)]
    agreed = pool_photos(weak, opts, yaws=[0.0, 72.0, 144.0]).estimate
    assert math.degrees(agreed.heading) == pytest.approx(10.0)
    headless = [_placed("q_1", (51.0, 49.0), 60, None), _placed("q_2", (52.0, 49.0), 60, 90.0)]
    assert pool_photos(headless, opts).estimate.heading is None
    from_second = pool_photos(headless, opts, yaws=[0.0, 180.0]).estimate.heading
    assert math.degrees(from_second) == pytest.approx(-90.0)
