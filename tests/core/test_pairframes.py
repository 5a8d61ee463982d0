"""Pair frames (core/pairframes.py): two references' shared points in one's camera frame,
solved once, read in either order, stored with the map and used by placement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cli.synthetic import FOV_DEG
from core import geometry as geo
from core.angles import wrap
from core.camera import Camera
from core.localiser import LocaliseOptions, Localiser
from core.pairframes import PairFrame, PairFrames, solve_frame
from core.placement import (
    Link,
    PlacementConfig,
    _pairs,
    _place_in_frame,
    _stored_near,
    place_query,
    pnp_ransac,
)
from core.types import Matches
from tests.core.test_geometry import K, _features, _seen, two_views
from tests.support.frames import solve_every_frame_as

SETTINGS = PlacementConfig().frame_settings()


def test_a_frame_holds_the_true_points_at_the_true_scale() -> None:
    """Exact matches: the points in A's camera frame are the true ones (A's camera rotation
    applied), B's centre lies at the known baseline, and the frame read from B's side is the
    same pair."""
    world, (ha, ca), (hb, cb), fa, fb, match = two_views(np.random.default_rng(0))
    baseline = math.hypot(cb[0] - ca[0], cb[1] - ca[1])
    frame = solve_frame(fa, fb, K, K, baseline, match, SETTINGS)
    assert frame is not None and len(frame.mine) > 0.9 * len(world)
    truth = (world[frame.mine] - [*ca, 0.0]) @ geo.camera_rotation(ha).T
    np.testing.assert_allclose(frame.points, truth, atol=2e-3)
    assert np.linalg.norm(frame.partner_centre) == pytest.approx(baseline, rel=1e-6)
    # B's frame of the same pair: the same points in B's camera, A's centre at the baseline.
    back = frame.flipped()
    np.testing.assert_array_equal(back.mine, frame.theirs)
    truth_b = (world[frame.mine] - [*cb, 0.0]) @ geo.camera_rotation(hb).T
    np.testing.assert_allclose(back.points, truth_b, atol=2e-3)
    assert np.linalg.norm(back.partner_centre) == pytest.approx(baseline, rel=1e-6)
    again = back.flipped()
    np.testing.assert_allclose(again.points, frame.points, atol=1e-4)  # float32 twice


def test_a_pair_is_solved_once_whichever_reference_asks() -> None:
    """``PairFrames`` solves a pair in one order (by reference id) and serves the other order
    by flipping it: (b, a) is exactly (a, b) seen from b, and nothing is solved twice."""
    _, (_, ca), (_, cb), fa, fb, match = two_views(np.random.default_rng(1))
    frames = PairFrames([fa, fb], np.array([ca, cb]), ["b-id", "a-id"], lambda _i: K, match,
                        SETTINGS)  # fmt: skip
    ab, ba = frames(0, 1), frames(1, 0)
    assert ab is not None and ba is not None and frames.solved == 1
    np.testing.assert_array_equal(ba.flipped().points, ab.points)  # id "a-id" solved first
    np.testing.assert_array_equal(ab.mine, ba.theirs)


def test_too_few_shared_points_give_no_frame() -> None:
    _, (_, ca), (_, cb), fa, fb, _ = two_views(np.random.default_rng(2))

    def few(_a, _b) -> Matches:
        return Matches(np.column_stack([np.arange(8), np.arange(8)]), np.ones(8, np.float32))

    assert solve_frame(fa, fb, K, K, 6.3, few, SETTINGS) is None


def test_stored_partners_stand_in_for_the_similarities_only_when_they_can() -> None:
    """A's stored partners are its most similar references in range: the first of them not
    linked and not hidden are B's candidates, unless too few are left of a list that may have
    been cut (then the similarities are read)."""
    in_range = np.ones(10, bool)
    in_range[7] = False  # hidden
    assert _stored_near([5, 6, 7, 8], {6}, in_range, 2, 4) == [5, 8]
    assert _stored_near([5, 6, 7, 8], {6}, in_range, 3, 4) is None  # cut list, too few left
    assert _stored_near([5, 6], {6}, in_range, 3, 4) == [5]  # every reference in range
    assert _stored_near(None, set(), in_range, 1, 4) is None


def test_linked_partners_with_a_stored_frame_are_tried_first() -> None:
    """Of A's linked partners, those whose frame with A the map stores (with A or with them)
    come before those that must be solved, each group by strength; then A's stored partners."""
    positions = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1.0, 3.0], [3, 1]])

    def link(i: int, n: int) -> Link:
        return Link(i, np.arange(n), np.arange(n))

    links = [link(0, 90), link(1, 80), link(2, 70), link(3, 60)]
    stored = {0: [3, 5], 2: [0], 5: [0]}
    conf = PlacementConfig(anchors=1, partners=4)
    pairs = _pairs(links, positions, lambda _i, _a: None, conf, None, stored.get)
    assert [b.index for _a, b in pairs] == [2, 3, 1, 5]  # 2 stores its frame with A; A stores 3
    pairs = _pairs(links, positions, lambda _i, _a: None, conf, None, lambda _i: None)
    assert [b.index for _a, b in pairs][:3] == [1, 2, 3]  # no stored frames: by strength


@pytest.fixture(scope="module")
def framed_scene(copy_scene_map):
    """The scene map with its camera and its pair frames built by the build step (without
    ``pose``: frames only)."""
    from core.mapbuild import add_geometry

    store = copy_scene_map()
    store.set_camera("scene", Camera(fov_x_deg=FOV_DEG))
    step = add_geometry(store, "scene")
    m = store.open("scene")
    assert step is not None and step.built == len(m) and step.remaining == 0
    assert m.pair_frames.count() == len(m) and m.geometry.count() == 0
    assert store.geometry_counts("scene") == {"pair_frames": len(m), "pose": 0}
    return store


@pytest.mark.integration  # real XFeat features of the scene map
def test_stored_frames_are_the_solved_ones_and_jobs_read_them(framed_scene) -> None:
    """Every stored frame equals the one a job would solve (the same arrays), a job with the
    map's settings reads them and solves none, and a job with other frame settings (they
    change what a frame is) solves its own."""
    m = framed_scene.open("scene")
    loc = Localiser(m)
    stored = loc.pair_frames(LocaliseOptions())
    assert m.pair_frames.count() == len(m)
    camera = m.camera
    assert camera is not None
    solved = PairFrames(  # the same job's frames, every pair solved
        m.features, m.positions, m.ids, lambda i: camera.matrix(m.features[i].image_size),
        loc.job_matcher(LocaliseOptions()).match, PlacementConfig().frame_settings(),
    )  # fmt: skip
    pairs = [(i, m.index[p]) for i in range(len(m)) for p in m.pair_frames.partners(i) or ()]
    assert len(pairs) >= 3 * len(m)  # measured ~6 per reference
    framed = [stored(i, j) is not None for i, j in pairs]
    assert sum(framed) >= len(pairs) // 3  # measured 275 of 576 on an AVX-512 CPU
    for i, j in pairs[::3]:  # a third solved again (~25 ms a pair), each against the store
        a, b = stored(i, j), solved(i, j)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            np.testing.assert_array_equal(a.mine, b.mine)
            np.testing.assert_array_equal(a.points, b.points)
            np.testing.assert_array_equal(a.rotation, b.rotation)
    assert stored.solved == 0 and stored.read == len(pairs) + len(pairs[::3])
    # The partner's centre, read without the points, in either order: as the whole frame's.
    fresh = loc.pair_frames(LocaliseOptions())
    for i, j in pairs:
        for a_, b_ in ((i, j), (j, i)):
            centre, frame = fresh.partner_centre(a_, b_), stored(a_, b_)
            assert (centre is None) == (frame is None)
            if centre is not None and frame is not None:
                np.testing.assert_array_equal(centre, frame.partner_centre)
    assert fresh.read == 0 and fresh.solved == 0
    other = loc.pair_frames(LocaliseOptions(placement_conf={"essential_px": 3.0}))
    other(*pairs[0])
    assert other.read == 0 and other.solved == 1


@pytest.mark.integration
def test_placement_with_stored_frames_answers_as_without(framed_scene, copy_scene_map) -> None:
    """The same views placed on the map with stored frames and on a copy without, which
    solves every frame: the same estimates, to the last bits of a float. The copy is told the
    stored partner lists, as placement tries the linked partners with a stored frame first."""
    from tests.core.test_placement import _random_views

    bare = copy_scene_map()
    bare.set_camera("scene", Camera(fov_x_deg=FOV_DEG))
    with_frames, without = Localiser(framed_scene.open("scene")), Localiser(bare.open("scene"))
    assert without.map.pair_frames.count() == 0
    solve_every_frame_as(without, with_frames)
    placed = 0
    for image, _ in _random_views(8):
        a = with_frames.localise(image).estimate
        b = without.localise(image).estimate
        assert a.method == b.method
        placed += a.method.endswith("+placement")
        if a.localised:
            assert a.x == pytest.approx(b.x, abs=1e-6) and a.y == pytest.approx(b.y, abs=1e-6)
    assert placed >= 4
    stored_partners = with_frames.pair_frames(LocaliseOptions()).partners
    assert without.pair_frames(LocaliseOptions()).partners(0) == stored_partners(0)


def test_a_frame_places_a_third_camera_by_its_pose() -> None:
    """A third upright camera seeing the pair's points: PnP against A's frame recovers its
    centre in that frame to a thousandth of the scene's units."""
    world, (ha, ca), _, fa, fb, match = two_views(np.random.default_rng(3))
    frame = solve_frame(fa, fb, K, K, math.hypot(6.0, 2.0), match, SETTINGS)
    assert frame is not None
    hq, cq = math.radians(50), (3.0, -1.0)
    seen = np.hstack([world, np.ones((len(world), 1))]) @ geo._projection(K, hq, cq).T
    px = seen[:, :2] / seen[:, 2:]
    solved = pnp_ransac(frame.points, px[frame.mine], K, 2.0, 12)
    assert solved is not None
    rot, t, inliers = solved
    assert len(inliers) > 0.95 * len(frame.mine)
    truth = geo.camera_rotation(ha) @ np.array([cq[0] - ca[0], cq[1] - ca[1], 0.0])
    np.testing.assert_allclose(-rot.T @ t, truth, atol=1e-3)


class _Frames:
    """A fixed set of A's frames, as ``PairFrames`` serves them (none stored)."""

    def __init__(self, frames: dict[tuple[int, int], PairFrame]) -> None:
        self._frames = frames

    def __call__(self, a: int, b: int) -> PairFrame | None:
        return self._frames.get((a, b))

    def partners(self, _i: int) -> None:
        return None


@pytest.mark.parametrize("pooled", [False, True])
def test_a_query_no_pair_places_is_placed_by_its_anchors_frames_together(pooled: bool) -> None:
    """The query is linked to A only, through 8 points A shares with B1 and 8 others it shares
    with B2: neither pair reaches 12 correspondences; pooled, A's two frames place the query at
    its true position and heading (exact frames, as the true cameras give them)."""
    rng = np.random.default_rng(7)
    world = np.column_stack([rng.uniform(-10, 30, 600), rng.uniform(-10, 30, 600),
                             rng.uniform(-1, 4, 600)])  # fmt: skip
    ha, hq, cq = math.radians(30), math.radians(50), (3.0, -1.0)
    positions = np.array([[0.0, 0.0], [6.0, 2.0], [2.0, -5.0]])  # A, B1, B2
    seen_q, ok_q = _seen(world, hq, cq)
    shared = np.flatnonzero(_seen(world, ha, (0.0, 0.0))[1] & ok_q)[:16]
    assert len(shared) == 16
    rot_a = geo.camera_rotation(ha)

    def frame(points: np.ndarray, heading_b: float, b: int) -> PairFrame:
        """A's frame of (A, B): the points in A's camera, B's pose relative to A."""
        rot = geo.camera_rotation(heading_b) @ rot_a.T
        centre_b = rot_a @ np.array([*positions[b], 0.0])
        return PairFrame(points, np.arange(len(points)), (rot_a @ world[points].T).T, rot,
                         -rot @ centre_b)  # fmt: skip

    frames = _Frames({(0, 1): frame(shared[:8], math.radians(75), 1),
                      (0, 2): frame(shared[8:], math.radians(0), 2)})  # fmt: skip
    query, a = _features(seen_q), Link(0, shared, shared)
    conf = PlacementConfig(pooled=pooled)
    for b in (1, 2):
        assert _place_in_frame(query, K, a, Link(b, shared[:0], shared[:0]), frames(0, b),
                               positions, conf) is None  # fmt: skip
    got = place_query(query, K, [a], frames, positions, (4.0, 0.0), conf)  # type: ignore[arg-type]
    if not pooled:
        assert got is None
        return
    assert got is not None and got.placements[0][2] == 16
    assert (got.x, got.y) == (pytest.approx(cq[0], abs=1e-3), pytest.approx(cq[1], abs=1e-3))
    assert abs(wrap(got.heading - hq)) < 1e-3
