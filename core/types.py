"""Plain data passed between the pipeline's stages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np


@dataclass
class Features:
    """Local features of one image, in the pixel coordinates of the image as given."""

    keypoints: np.ndarray  # (N, 2) float32, x then y
    descriptors: np.ndarray  # (N, D) float32 (stored as float16 in maps)
    scores: np.ndarray  # (N,) float32 detector confidence
    image_size: tuple[int, int]  # (width, height)

    def __post_init__(self) -> None:
        n = len(self.keypoints)
        if self.keypoints.shape != (n, 2) or len(self.descriptors) != n or len(self.scores) != n:
            raise ValueError("keypoints, descriptors and scores must have the same length")

    def __len__(self) -> int:
        return len(self.keypoints)


class FeatureLookup(Protocol):
    """Features by map row: a map's feature set (core.mapstore.FeatureSet) or a plain list."""

    def __getitem__(self, i: int, /) -> Features: ...


@dataclass
class Matches:
    """Tentative correspondences between a query (column 0) and a reference (column 1)."""

    indices: np.ndarray  # (M, 2) int64
    scores: np.ndarray  # (M,) float32 in [0, 1], higher is more confident

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def empty(cls) -> Matches:
        return cls(np.empty((0, 2), np.int64), np.empty((0,), np.float32))


@dataclass
class Verification:
    inliers: np.ndarray  # (M,) bool mask over the tentative matches
    model: np.ndarray | None = None  # the fitted 3x3 matrix, when one was found

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())


@dataclass
class CandidateResult:
    """Everything measured for one (query, reference) pair.

    The one candidate schema: workers store it with :meth:`to_row`, and the database, the client
    and the evaluation read it back with :meth:`from_row`. A row is flat and holds plain Python
    values (``position`` becomes ``x, y``; ``retrieval_rank`` is ``rank``) — the columns of
    ``db/models.CandidateMatch``. The per-pair timings are not stored (the job's timings are).
    """

    reference_id: str
    position: tuple[float, float]
    retrieval_rank: int
    retrieval_score: float
    query_keypoints: int
    reference_keypoints: int
    tentative_matches: int
    inliers: int
    mean_match_score: float
    match_seconds: float = 0.0
    verify_seconds: float = 0.0
    # "coarse": the shortlist's matches (retrieval rank and score are the shortlist's);
    # "fine": a view re-verified by the fine stage (rank = its place, 0 = the coarse winner's;
    # score = that place's pooled coarse evidence), see core/finestage.py.
    stage: str = "coarse"
    # Which photo of the job's set (0-based, core/photoset.py) the query side is; 0 for a
    # single-photo job.
    photo: int = 0

    # The keys of a row, in column order.
    ROW_FIELDS: ClassVar[tuple[str, ...]] = (
        "reference_id",
        "x",
        "y",
        "rank",
        "retrieval_score",
        "query_keypoints",
        "reference_keypoints",
        "tentative_matches",
        "inliers",
        "inlier_ratio",
        "mean_match_score",
        "stage",
        "photo",
    )

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / self.tentative_matches if self.tentative_matches else 0.0

    def to_row(self) -> dict[str, Any]:
        """The stored row: plain ``str``/``int``/``float`` (the pipeline hands numpy scalars)."""
        return {
            "reference_id": str(self.reference_id),
            "x": float(self.position[0]),
            "y": float(self.position[1]),
            "rank": int(self.retrieval_rank),
            "retrieval_score": float(self.retrieval_score),
            "query_keypoints": int(self.query_keypoints),
            "reference_keypoints": int(self.reference_keypoints),
            "tentative_matches": int(self.tentative_matches),
            "inliers": int(self.inliers),
            "inlier_ratio": float(self.inlier_ratio),
            "mean_match_score": float(self.mean_match_score),
            "stage": str(self.stage),
            "photo": int(self.photo),
        }

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> CandidateResult:
        """A candidate from a stored row (``inlier_ratio`` is derived, so it is not read back)."""
        missing = [k for k in cls.ROW_FIELDS if k not in row]
        if missing:
            raise KeyError(f"candidate row {row.get('reference_id')!r} lacks {missing}")
        return cls(
            reference_id=row["reference_id"],
            position=(row["x"], row["y"]),
            retrieval_rank=row["rank"],
            retrieval_score=row["retrieval_score"],
            query_keypoints=row["query_keypoints"],
            reference_keypoints=row["reference_keypoints"],
            tentative_matches=row["tentative_matches"],
            inliers=row["inliers"],
            mean_match_score=row["mean_match_score"],
            stage=row["stage"],
            photo=row["photo"],
        )


@dataclass
class InlierMatches:
    """One candidate's verified inlier matches, in the frames its features were extracted in:
    what a job keeps to draw its figure (workers/figures.py), so the figure shows exactly what
    the job counted."""

    reference_id: str
    stage: str  # "coarse" or "fine", as CandidateResult.stage
    query_points: np.ndarray  # (K, 2) float32 x, y in the query as extracted (query_size)
    reference_points: np.ndarray  # (K, 2) float32 x, y in the reference as extracted
    reference_size: tuple[int, int]  # (width, height) of the reference as extracted
    tentative: int  # matches before verification

    def __len__(self) -> int:
        return len(self.query_points)


@dataclass
class Estimate:
    x: float | None
    y: float | None
    confidence: float
    localised: bool
    method: str
    support: list[str] = field(default_factory=list)  # reference ids that voted for it
    heading: float | None = None  # radians in the map frame, where placement gave one
    pose_inliers: int | None = None  # that solve's 2D-3D inliers


@dataclass
class LocalisationResult:
    estimate: Estimate
    candidates: list[CandidateResult]
    timings: dict[str, float]  # seconds per stage
    config: dict
    # The (width, height) the query was extracted at, and the factor that brought the photo
    # there from its own size (core/querysize.py): keypoints are in that frame.
    query_size: tuple[int, int] | None = None
    query_scale: float = 1.0
    # The verified inliers of each candidate, in the order of ``candidates``.
    inliers: list[InlierMatches] = field(default_factory=list)
    # The profile that ran (core.localiser.ProfileRun: "fast" when "accurate" was asked of a
    # map without a fine set) and why it or its threshold is not what was asked.
    profile_used: str = "fast"
    profile_note: str | None = None
    # Whether the confidence is P(error < 5) by the map's fit, and which fit the map had
    # (a hash of its training.json; None: never fitted).
    calibrated: bool = False
    fit_id: str | None = None
