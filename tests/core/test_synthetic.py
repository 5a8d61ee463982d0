"""The synthetic data set: deterministic, Getty-shaped, geometrically true and matchable."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest

from cli.synthetic import (
    CAMERA_HEIGHT,
    MIN_CLEARANCE,
    World,
    generate_dataset,
    make_world,
    nearest_free,
    reference_positions,
    render_view,
)
from core.features.sift import SiftExtractor
from core.images import read_image
from core.mapbuild import read_positions_csv
from core.matching.mnn import MutualNearestNeighbour
from core.verify import VerifyConfig, verify

SIZE = (240, 180)  # small renders keep the data set tests quick


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(0)


@pytest.fixture(scope="module")
def dataset(world: World, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(
        out, seed=0, grid=(3, 2), views_per_position=3, num_queries=4, size=SIZE, world=world
    )


def test_world_is_deterministic_for_a_seed() -> None:
    a, b, c = make_world(5), make_world(5), make_world(6)
    assert a.boxes == b.boxes
    assert np.array_equal(a.atlas[0], b.atlas[0]) and np.array_equal(a.floor[0], b.floor[0])
    assert a.boxes != c.boxes
    assert len(a.boxes) >= 3  # there are obstacles to see and to avoid


def test_render_is_deterministic_and_shaped(world: World) -> None:
    x, y = reference_positions(world, (6, 4))[7]
    first = render_view(world, x, y, 30.0)
    assert first.shape == (360, 480, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render_view(world, x, y, 30.0))
    # The photometric change is mild but real, and repeatable for a seeded generator.
    q1 = render_view(world, x, y, 30.0, rng=np.random.default_rng(1))
    q2 = render_view(world, x, y, 30.0, rng=np.random.default_rng(1))
    assert np.array_equal(q1, q2)
    diff = np.abs(q1.astype(int) - first.astype(int)).mean()
    assert 1.0 < diff < 40.0


def test_wall_top_projects_where_a_pinhole_camera_puts_it(world: World) -> None:
    # Facing the west room wall with no box in between, the wall's top edge must appear at
    # row h/2 - f (H - camera height) / distance.
    x, y = nearest_free(world, 20.0, world.depth / 2)
    assert not any(b.y0 <= y <= b.y1 and b.x1 < x for b in world.boxes)
    w, h = 480, 360
    f = (w / 2) / math.tan(math.radians(74.0) / 2)
    image = render_view(world, x, y, 180.0, size=(w, h))
    column = image[:, w // 2].astype(int)
    # The sky is a smooth gradient: the first sharp step down the column is the wall's top.
    steps = np.abs(np.diff(column, axis=0)).sum(axis=1)
    first_wall_row = int(np.argmax(steps > 30)) + 1
    expected = h / 2 - f * (world.wall_height - CAMERA_HEIGHT) / x
    assert abs(first_wall_row - expected) <= 1.5


def test_csvs_are_in_the_getty_format(dataset) -> None:
    for path, pattern, rows in (
        (dataset.references_csv, r"ref_\d{4}_\d+", dataset.references),
        (dataset.queries_csv, r"query_\d{4}", dataset.queries),
    ):
        lines = path.read_text().splitlines()
        assert lines[0] == "id,x,y"
        parsed = list(csv.DictReader(path.open()))
        assert [r["id"] for r in parsed] == [v.id for v in rows]
        assert all(re.fullmatch(pattern, r["id"]) for r in parsed)
        for r, v in zip(parsed, rows, strict=True):
            assert float(r["x"]) == pytest.approx(v.x, abs=1e-3)
            assert float(r["y"]) == pytest.approx(v.y, abs=1e-3)
        # The map builder, the real consumer, accepts it and finds every image.
        assert len(read_positions_csv(path, dataset.images_dir)) == len(rows)
    assert len(dataset.references) == 3 * 2 * 3 and len(dataset.queries) == 4


def test_images_decode_at_the_requested_size(dataset) -> None:
    for v in dataset.references + dataset.queries:
        image = read_image(dataset.images_dir / f"{v.id}.jpg")
        assert image.shape == (SIZE[1], SIZE[0], 3)
        assert image.std() > 20  # a textured scene, not a blank frame


def test_positions_are_on_free_floor(world: World, dataset) -> None:
    for v in dataset.references + dataset.queries:
        assert world.is_free(v.x, v.y), v
        assert world.clearance(v.x, v.y) >= MIN_CLEARANCE - 1e-9
    refs = np.array([(v.x, v.y) for v in dataset.references])
    for q in dataset.queries:  # between the reference positions, not beyond them
        assert refs[:, 0].min() <= q.x <= refs[:, 0].max()
        assert refs[:, 1].min() <= q.y <= refs[:, 1].max()


def test_dataset_is_deterministic_for_a_seed(world: World, dataset, tmp_path: Path) -> None:
    again = generate_dataset(
        tmp_path, seed=0, grid=(3, 2), views_per_position=3, num_queries=4, size=SIZE, world=world
    )
    assert again.references == dataset.references and again.queries == dataset.queries
    assert again.queries_csv.read_text() == dataset.queries_csv.read_text()
    for v in dataset.queries[:2] + dataset.references[:2]:
        name = f"{v.id}.jpg"
        assert (again.images_dir / name).read_bytes() == (dataset.images_dir / name).read_bytes()


def _inliers(a: np.ndarray, b: np.ndarray) -> int:
    extractor, matcher = SiftExtractor(), MutualNearestNeighbour()
    fa, fb = extractor.extract(a), extractor.extract(b)
    m = matcher.match(fa, fb)
    qa, rb = fa.keypoints[m.indices[:, 0]], fb.keypoints[m.indices[:, 1]]
    return verify(qa, rb, VerifyConfig()).num_inliers


def test_nearby_views_match_and_unrelated_views_do_not(world: World) -> None:
    x, y = reference_positions(world, (6, 4))[8]
    qx, qy = nearest_free(world, x + 1.5, y + 1.0)
    reference = render_view(world, x, y, 90.0)
    query = render_view(world, qx, qy, 105.0, rng=np.random.default_rng(0))
    near = _inliers(query, reference)
    behind = _inliers(query, render_view(world, x, y, 270.0))
    far_x, far_y = reference_positions(world, (6, 4))[23]
    far = _inliers(query, render_view(world, far_x, far_y, 0.0))
    # Unrelated pairs sit at MAGSAC's chance level (~15 inliers from ~100 random matches).
    assert near >= 100
    assert behind < 25 and far < 25
    assert near >= 5 * max(behind, far)
