"""Figures of a localisation (core/draw.py): the inliers a job keeps read back as stored, a
figure has one capped size whatever the photos' (a 6000x6000 upload included), and each inlier
is drawn where it was measured; and the localiser hands each candidate's inliers, in the frames
they were measured in (core/localiser.py)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.draw import (
    GAP,
    HEADER,
    MATCH_COLOUR,
    PANEL,
    FigureRow,
    KeptFigure,
    draw_figure,
    figure_size,
    pack_inliers,
    unpack_inliers,
)
from core.images import read_image
from core.localiser import Localiser
from core.mapstore import MapStore
from core.types import InlierMatches


def _inliers(rid: str, q: list, r: list, size=(160, 120), stage="coarse") -> InlierMatches:
    return InlierMatches(
        rid, stage, np.array(q, np.float32), np.array(r, np.float32), size, len(q) + 3
    )


def test_kept_inliers_read_back_as_stored():
    kept = [
        _inliers("a", [[1.5, 2.5], [30, 40]], [[5, 6], [7, 8]], stage="fine"),
        _inliers("b", np.empty((0, 2)).tolist(), np.empty((0, 2)).tolist(), (640, 480)),
    ]
    second = [_inliers("c", [[9, 9]], [[1, 1]], (320, 240))]
    figures = [KeptFigure((480, 360), "ab" * 32, kept), KeptFigure((200, 100), "cd" * 32, second)]
    first_back, second_back = unpack_inliers(pack_inliers(figures))
    assert (first_back.query_size, first_back.query_key) == ((480, 360), "ab" * 32)
    back = first_back.inliers
    assert [(m.reference_id, m.stage, m.reference_size, m.tentative) for m in back] == [
        ("a", "fine", (160, 120), 5),
        ("b", "coarse", (640, 480), 3),
    ]
    np.testing.assert_array_equal(back[0].query_points, kept[0].query_points)
    np.testing.assert_array_equal(back[0].reference_points, kept[0].reference_points)
    assert back[1].query_points.shape == (0, 2)
    assert (second_back.query_size, second_back.query_key) == ((200, 100), "cd" * 32)
    assert [m.reference_id for m in second_back.inliers] == ["c"], "each photo keeps its own"
    np.testing.assert_array_equal(second_back.inliers[0].query_points, [[9, 9]])
    with pytest.raises(ValueError, match="unreadable"):
        unpack_inliers(b"not an npz")


def test_inliers_kept_before_photo_sets_still_read():
    """Jobs stored with format 1 (one photo's figure, before photo sets) keep their figures."""
    meta = {
        "version": 1,
        "query_size": [480, 360],
        "query_key": "ef" * 32,
        "pairs": [
            {"reference_id": "a", "stage": "coarse", "reference_size": [160, 120], "tentative": 4}
        ],
    }
    out = io.BytesIO()
    np.savez_compressed(
        out,
        meta=np.array(json.dumps(meta)),
        q0=np.ones((1, 2), np.float32),
        r0=np.zeros((1, 2), np.float32),
    )
    (figure,) = unpack_inliers(out.getvalue())
    assert (figure.query_size, figure.query_key) == ((480, 360), "ef" * 32)
    assert [(m.reference_id, m.tentative) for m in figure.inliers] == [("a", 4)]
    np.testing.assert_array_equal(figure.inliers[0].query_points, [[1, 1]])


def _match_pixels(figure: np.ndarray) -> np.ndarray:
    return np.all(np.abs(figure.astype(int) - MATCH_COLOUR) < 40, axis=2)


def test_a_huge_query_is_drawn_on_the_capped_figure_where_its_inliers_are():
    """A 6000x6000 upload gives the figure every upload gets; an inlier measured at the centre
    of its 480x480 extraction frame is drawn at the centre of the query's panel, and its partner
    at the right place on the reference's."""
    query = np.zeros((6000, 6000, 3), np.uint8)
    ref = np.full((120, 160, 3), 128, np.uint8)
    match = _inliers("a", [[240, 240]], [[80, 60]])
    rows = [FigureRow(ref, match, "a"), FigureRow(ref, _inliers("b", [], []), "b")]
    figure = draw_figure(query, (480, 480), rows)
    assert (figure.shape[1], figure.shape[0]) == figure_size(2)
    assert figure.shape[1] <= 1000 and figure.shape[0] <= 2 * (HEADER + PANEL[1]) + 40
    side = min(PANEL)  # the square query fills a PANEL[1] x PANEL[1] square
    green = _match_pixels(figure)
    assert green[HEADER + side // 2, side // 2], "the query's end of the match"
    ref_scale = min(PANEL[0] / 160, PANEL[1] / 120)
    rx = PANEL[0] + GAP + round(80 * ref_scale)
    assert green[HEADER + round(60 * ref_scale), rx], "the reference's end"
    second_row = green[2 * HEADER + PANEL[1] : 2 * (HEADER + PANEL[1])]
    assert not second_row.any(), "a reference without inliers has no line"


def test_the_query_alone_is_captioned():
    query = np.full((300, 400, 3), 90, np.uint8)
    figure = draw_figure(query, None, [], "the query alone")
    assert (figure.shape[1], figure.shape[0]) == figure_size(0)
    caption = figure[:HEADER]
    assert (caption < 100).all(axis=2).sum() > 50, "no caption written"


def _query(scene: Path, k: int = 0) -> np.ndarray:
    row = list(csv.DictReader((scene / "queries.csv").open()))[k]
    return read_image(scene / "images" / f"{row['id']}.jpg")


@pytest.mark.integration  # the session's scene map (XFeat, VLAD)
def test_each_candidate_comes_with_the_inliers_it_counted(scene: Path, scene_xfeat_map: Path):
    loc = Localiser(MapStore(scene_xfeat_map).open("scene"))
    image = _query(scene)
    small = image[::2, ::2]  # extracted at 2x: the points are in the enlarged frame
    for photo in (image, small):
        result = loc.localise(photo)
        assert len(result.inliers) == len(result.candidates)
        w, h = result.query_size
        for c, m in zip(result.candidates, result.inliers, strict=True):
            assert (m.reference_id, m.stage) == (c.reference_id, c.stage)
            assert len(m) == c.inliers and m.tentative == c.tentative_matches
            ref = loc.map.features[loc.map.index[c.reference_id]]
            assert m.reference_size == ref.image_size
            if len(m):
                assert (m.query_points >= 0).all() and (m.query_points < (w, h)).all()
                # Each point is one of the keypoints the pair was matched with.
                assert np.isin(m.reference_points[:, 0], ref.keypoints[:, 0]).all()
        assert max(c.inliers for c in result.candidates) > 0


@pytest.mark.integration
def test_a_black_6000_px_photo_is_extracted_at_the_maps_scale(scene_xfeat_map: Path):
    """Issue: a 35 kB black 6000x6000 PNG took 32 s to extract at full size. It is brought to
    the references' 480x360 scale first (core/querysize.py): its cost is the map's size's."""
    loc = Localiser(MapStore(scene_xfeat_map).open("scene"))
    ok, png = cv2.imencode(".png", np.zeros((6000, 6000, 3), np.uint8))
    assert ok and len(png) < 1_000_000
    result = loc.localise(cv2.imdecode(png, cv2.IMREAD_COLOR))
    assert result.query_size == (480, 480) and result.query_scale == pytest.approx(0.08)
    assert all(c.inliers == 0 for c in result.candidates)
