"""core/angles.py: headings in the map's frame."""

from __future__ import annotations

import math

import pytest

from core.angles import angular_distance, circular_median, heading_text, wrap


def test_wrap_and_distance_go_the_short_way_round() -> None:
    assert wrap(3 * math.pi / 2) == pytest.approx(-math.pi / 2)
    assert angular_distance(math.radians(350), math.radians(10)) == pytest.approx(math.radians(20))


def test_the_circular_median_is_not_fooled_by_the_wrap() -> None:
    """359, 1 and 3 degrees: the median is 1 degree (an arithmetic mean would say 121)."""
    angles = [math.radians(a) for a in (359.0, 1.0, 3.0)]
    assert math.degrees(circular_median(angles)) == pytest.approx(1.0)
    # Weights move it: the heavy 3 degrees wins.
    assert math.degrees(circular_median(angles, [1.0, 1.0, 5.0])) == pytest.approx(3.0)


def test_a_heading_reads_in_whole_degrees_from_the_maps_x_axis() -> None:
    assert heading_text(None) == "-"
    assert heading_text(0.0) == "0°" and heading_text(math.pi / 2) == "90°"
    assert heading_text(-math.pi / 2) == "270°"  # radians in [-pi, pi) read as [0, 360)
