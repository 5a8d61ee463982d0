"""Figures of a localisation (core/draw.py): colours, layout, and that matches are drawn."""

from __future__ import annotations

import numpy as np

from core.draw import HEADER, PairMatches, draw_matches, figure_size, jet_colours


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
