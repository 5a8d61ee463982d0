"""A localiser that solves every pair frame per query yet tries the pairs another one tries:
the "without stored frames" side of tests/core/test_pairframes.py and bench/pairframes.py."""

from __future__ import annotations

from core.localiser import LocaliseOptions, Localiser
from core.pairframes import PairFrames


def solve_every_frame_as(solving: Localiser, stored: Localiser) -> None:
    """Give ``solving`` (a map with no stored frames) the stored partner lists of ``stored``:
    placement tries the linked partners whose frame is stored first (core/placement.py), so
    without them the two would try different pairs, not the same pairs read or solved."""

    def pair_frames(opts: LocaliseOptions, feats=None) -> PairFrames:
        frames = Localiser.pair_frames(solving, opts, feats)
        frames.partners = stored.pair_frames(opts).partners  # type: ignore[method-assign]
        return frames

    solving.pair_frames = pair_frames  # type: ignore[method-assign]
