"""The one candidate schema: CandidateResult to a stored row and back."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.types import CandidateResult


def _candidate() -> CandidateResult:
    # What the localiser hands over: numpy scalars in places, per-pair timings that are not stored.
    return CandidateResult(
        reference_id=np.str_("r7"),
        position=(np.float32(1.5), np.float64(-2.25)),
        retrieval_rank=np.int64(3),
        retrieval_score=np.float32(0.75),
        query_keypoints=1024,
        reference_keypoints=np.int32(900),
        tentative_matches=np.int64(80),
        inliers=np.int64(20),
        mean_match_score=np.float32(0.5),
        match_seconds=0.01,
        verify_seconds=0.02,
    )


def test_a_row_holds_plain_values_under_the_column_names():
    row = _candidate().to_row()
    assert tuple(row) == CandidateResult.ROW_FIELDS
    assert {type(v) for v in row.values()} <= {str, int, float}
    assert type(row["reference_id"]) is str and type(row["rank"]) is int
    assert (row["x"], row["y"], row["rank"]) == (1.5, -2.25, 3)
    assert row["inlier_ratio"] == 0.25


def test_from_row_reads_back_what_to_row_wrote_but_the_timings():
    original = _candidate()
    back = CandidateResult.from_row(original.to_row())
    assert back == dataclasses.replace(original, match_seconds=0.0, verify_seconds=0.0)
    assert back.to_row() == original.to_row()


def test_a_row_without_a_column_is_refused_by_name():
    row = _candidate().to_row()
    del row["inliers"]
    with pytest.raises(KeyError, match="inliers"):
        CandidateResult.from_row(row)
