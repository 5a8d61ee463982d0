"""Plain data passed between the pipeline's stages."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """Everything measured for one (query, reference) pair."""

    reference_id: str
    position: tuple[float, float]
    retrieval_rank: int
    retrieval_score: float
    query_keypoints: int
    reference_keypoints: int
    tentative_matches: int
    inliers: int
    mean_match_score: float
    match_seconds: float
    verify_seconds: float

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / self.tentative_matches if self.tentative_matches else 0.0


@dataclass
class Estimate:
    x: float | None
    y: float | None
    confidence: float
    localised: bool
    method: str
    support: list[str] = field(default_factory=list)  # reference ids that voted for it


@dataclass
class LocalisationResult:
    estimate: Estimate
    candidates: list[CandidateResult]
    timings: dict[str, float]  # seconds per stage
    config: dict
