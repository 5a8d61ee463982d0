"""What a job keeps for its figures (workers/figures.py keep_figures): per photo, distinct
references, those that decided the answer first (the fine stage's where it answered, then the
estimate's support), never a candidate without a match, at most FIGURE_REFERENCES; and the photo
fitted to a panel. A photo set keeps one figure per photo, ordered by the set's answer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.draw import PANEL, unpack_inliers
from core.images import decode_image
from core.types import CandidateResult, Estimate, InlierMatches, LocalisationResult
from workers.blobstore import DirectoryBlobStore
from workers.figures import FIGURE_REFERENCES, PANEL_LIMITS, keep_figures


def _pair(rid: str, inliers: int, stage: str = "coarse", tentative: int | None = None):
    tentative = inliers + 10 if tentative is None else tentative
    c = CandidateResult(rid, (1.0, 2.0), 0, 0.5, 100, 100, tentative, inliers, 0.9, stage=stage)
    points = np.full((inliers, 2), 3.0, np.float32)
    return c, InlierMatches(rid, stage, points, points, (480, 360), tentative)


def _result(pairs, method: str, support: list[str]) -> LocalisationResult:
    return LocalisationResult(
        Estimate(1.0, 2.0, 0.8, True, method, support),
        [c for c, _ in pairs],
        {},
        {},
        (480, 360),
        1.0,
        [m for _, m in pairs],
    )


def _kept(result: LocalisationResult, blobs: Path) -> list[tuple[str, str, int]]:
    photo = np.full((3000, 4000, 3), 77, np.uint8)  # a large upload
    data = keep_figures(result.estimate, [result], [photo], DirectoryBlobStore(blobs))
    assert data is not None
    (kept,) = unpack_inliers(data)
    assert kept.query_size == (480, 360)
    # The query is kept fitted to a panel: a figure never decodes the upload.
    jpeg = (blobs / kept.query_key[:2] / kept.query_key).read_bytes()
    thumb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape == (round(PANEL[0] * 3 / 4), PANEL[0], 3)
    return [(m.reference_id, m.stage, len(m)) for m in kept.inliers]


def test_the_fine_stage_rows_come_first_where_it_answered(tmp_path):
    pairs = [
        _pair("a", 50),
        _pair("b", 40),
        _pair("c", 0, tentative=0),  # not stored as a candidate: not kept
        _pair("b", 12, "fine"),
        _pair("d", 30, "fine"),
    ]
    assert _kept(_result(pairs, "cluster+fine", ["a"]), tmp_path) == [
        ("d", "fine", 30),
        ("b", "fine", 12),
        ("a", "coarse", 50),  # b's coarse row is not kept: b is shown once
    ]
    # Where the coarse stage answered, its rows come first, its support before the rest.
    assert _kept(_result(pairs, "cluster", ["b"]), tmp_path) == [
        ("b", "coarse", 40),
        ("a", "coarse", 50),
        ("d", "fine", 30),
    ]


def test_at_most_figure_references_are_kept(tmp_path):
    pairs = [_pair(f"r{i}", 100 - i) for i in range(FIGURE_REFERENCES + 4)]
    kept = _kept(_result(pairs, "cluster", []), tmp_path)
    assert [r for r, _, _ in kept] == [f"r{i}" for i in range(FIGURE_REFERENCES)]


def test_a_thin_uploads_kept_query_can_be_drawn(tmp_path):
    """A 2000x16 upload (the narrowest accepted) keeps a 474x4 query: still readable."""
    blobs = DirectoryBlobStore(tmp_path)
    result = _result([_pair("a", 5)], "cluster", [])
    data = keep_figures(result.estimate, [result], [np.zeros((16, 2000, 3), np.uint8)], blobs)
    assert data is not None
    thumb = decode_image(blobs.get(unpack_inliers(data)[0].query_key), PANEL_LIMITS)
    assert thumb.shape[1] == PANEL[0] and thumb.shape[0] < 16


def test_a_photo_set_keeps_each_photos_own_figure_ordered_by_the_sets_answer(tmp_path):
    """The set's estimate (method ``set:...``, its support pooled from every photo) decides the
    order in every photo's figure; each figure holds that photo's own inliers and image."""
    blobs = DirectoryBlobStore(tmp_path)
    first = _result([_pair("a", 50), _pair("b", 20)], "cluster", ["a"])
    second = _result([_pair("c", 60), _pair("b", 25, "fine")], "cluster", ["c"])
    answer = Estimate(1.0, 2.0, 0.9, True, "set:cluster+fine", ["b"])
    images = [np.full((300, 400, 3), 10, np.uint8), np.full((300, 400, 3), 200, np.uint8)]
    data = keep_figures(answer, [first, second], images, blobs)
    assert data is not None
    one, two = unpack_inliers(data)
    assert [(m.reference_id, m.stage) for m in one.inliers] == [("b", "coarse"), ("a", "coarse")]
    assert [(m.reference_id, m.stage) for m in two.inliers] == [("b", "fine"), ("c", "coarse")]
    shades = [decode_image(blobs.get(f.query_key), PANEL_LIMITS).mean() for f in (one, two)]
    assert abs(shades[0] - 10) < 3 and abs(shades[1] - 200) < 3, "each photo keeps its own image"
