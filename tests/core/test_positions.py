"""The one "same position" rule (core/positions.py)."""

from __future__ import annotations

import numpy as np

from core.positions import at_position, position_groups, position_key


def test_views_of_one_position_share_a_key_and_a_group() -> None:
    xy = np.array([[1.0, 2.0], [1.0 + 1e-9, 2.0], [1.0, 2.00001], [3.0, 4.0]])
    assert position_key(*xy[0]) == position_key(*xy[1]) != position_key(*xy[2])
    groups = position_groups(xy)
    assert groups[0] == groups[1] and len(set(groups.tolist())) == 3
    # A float32 copy of the position still finds its views.
    found = at_position(xy, np.array([1.0, 2.0], np.float32))
    assert found.tolist() == [True, True, False, False]
    assert position_groups(np.zeros((0, 2))).shape == (0,)
