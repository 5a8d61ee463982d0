"""The map plot (api/plot.py) has axes: ticks at round values that agree with where the points
are drawn, one scale on both axes."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from api.plot import job_plot_svg, tick_step, ticks
from core.types import CandidateResult

SVG = "{http://www.w3.org/2000/svg}"


def _ticks(root: ET.Element, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, pixel positions) of one axis' tick labels."""
    labels = [t for t in root.iter(f"{SVG}text") if t.get("class") == f"tick-{axis}"]
    values = np.array([float(t.text or "nan") for t in labels])
    where = np.array([float(t.get("x" if axis == "x" else "y") or "nan") for t in labels])
    return values, where


def test_ticks_say_where_the_points_are():
    references = [(100.0, 20.0), (130.0, 20.0), (100.0, 35.0), (130.0, 35.0)]
    candidate = CandidateResult("r", (130.0, 35.0), 0, 0.5, 100, 100, 40, 30, 0.9)
    root = ET.fromstring(job_plot_svg(references, [candidate], (112.0, 27.0), 0.8, True))
    xs, x_px = _ticks(root, "x")
    ys, y_px = _ticks(root, "y")
    assert len(xs) >= 3 and len(ys) >= 3
    assert xs.min() <= 100 and xs.max() >= 130 and ys.min() <= 20 and ys.max() >= 35
    # Linear, x to the right and y upwards, with one scale for both.
    x_fit, y_fit = np.polyfit(xs, x_px, 1), np.polyfit(ys, y_px - 4, 1)  # labels sit 4 px low
    assert x_fit[0] > 0 and y_fit[0] == pytest.approx(-x_fit[0], rel=1e-3)
    dots = [c for c in root.iter(f"{SVG}circle") if c.get("r") == "2"]
    for (x, y), dot in zip(references, dots, strict=True):
        assert float(dot.get("cx", "nan")) == pytest.approx(np.polyval(x_fit, x), abs=0.2)
        assert float(dot.get("cy", "nan")) == pytest.approx(np.polyval(y_fit, y), abs=0.2)
    assert {t.text for t in root.iter(f"{SVG}text") if t.get("class") == "axis-name"} == {"x", "y"}


def test_tick_steps_are_round():
    assert tick_step(30) == 10 and tick_step(7) == 2 and tick_step(0.3) == pytest.approx(0.1)
    assert ticks(-0.5, 2.5, 1.0) == [0.0, 1.0, 2.0]


def _path_ends(path: ET.Element) -> tuple[np.ndarray, np.ndarray]:
    """The start and tip of an arrow's shaft (its first two points)."""
    d = path.get("d", "").replace("M", " ").replace("L", " ").split()
    start, tip = (np.array([float(v) for v in p.split(",")]) for p in d[:2])
    return start, tip


def test_headings_point_the_way_the_camera_faced_and_each_photo_has_its_number():
    """A pose's heading is radians in the map's frame (y up); the SVG's y grows down. A set's
    photos are numbered at their own answers, with their own arrows where posed."""
    references = [(0.0, 0.0), (40.0, 0.0), (0.0, 30.0), (40.0, 30.0)]
    photos = [(10.0, 10.0, None), (30.0, 20.0, math.pi)]
    svg = job_plot_svg(references, [], (20.0, 15.0), 0.9, True, math.pi / 2, photos)
    root = ET.fromstring(svg)
    paths = {p.get("class"): p for p in root.iter(f"{SVG}path")}
    start, tip = _path_ends(paths["heading"])
    assert tip[0] == pytest.approx(start[0], abs=0.1) and tip[1] < start[1] - 20, "north is up"
    start, tip = _path_ends(paths["photo-heading"])
    assert tip[0] < start[0] - 20 and tip[1] == pytest.approx(start[1], abs=0.1), "pi is west"
    marks = [g for g in root.iter(f"{SVG}g") if g.get("class") == "photo-answer"]
    assert [g.find(f"{SVG}text").text for g in marks] == ["1", "2"]
    # Photo 2's marker is where its arrow starts: its own answer, not the set's.
    assert float(marks[1].find(f"{SVG}circle").get("cx")) == pytest.approx(start[0], abs=0.1)
    assert "each photo of the set alone" in svg and "the way the camera faced" in svg
    # A single photo without a pose has neither, and the plot keeps its height.
    plain = ET.fromstring(job_plot_svg(references, [], (20.0, 15.0), 0.9, True))
    assert not [p for p in plain.iter(f"{SVG}path") if "heading" in (p.get("class") or "")]
    assert int(plain.get("height")) < int(root.get("height"))
