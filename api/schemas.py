"""Response bodies of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class CandidateOut(BaseModel):
    reference_id: str
    x: float
    y: float
    rank: int = Field(description="Place in the retrieval shortlist (0 = most similar).")
    retrieval_score: float
    query_keypoints: int
    reference_keypoints: int
    tentative_matches: int
    inliers: int = Field(description="Matches that passed geometric verification.")
    inlier_ratio: float
    mean_match_score: float
    stage: str = Field(
        description="coarse (the shortlist) or fine (re-verified, accurate profile)."
    )
    photo: int = Field(
        0, description="Which photo of a photo set (0-based) this is evidence for; 0 otherwise."
    )


class SetPhotoOut(BaseModel):
    photo: int = Field(description="0-based, in the set's order.")
    yaw: float | None = Field(description="Degrees from the first photo, as given.")
    x: float | None = Field(description="Where this photo alone localised (or its guess).")
    y: float | None
    localised: bool | None
    heading: float | None = Field(
        description="Radians in the map's frame, where placement gave one."
    )


class JobOut(BaseModel):
    id: str
    map_name: str
    status: str = Field(description="pending, running, done or failed")
    x: float | None
    y: float | None
    confidence: float | None = Field(description="In [0, 1].")
    localised: bool | None = Field(
        description="False: the evidence was too weak for a place; x and y, when present, are "
        "then a best guess (method cluster:doubt)."
    )
    error: str | None = Field(description="Why the job failed.")
    timings: dict[str, float] | None = Field(description="Seconds per stage.")
    worker: str | None
    matcher: str | None
    method: str | None = Field(description="How the estimate was made, e.g. cluster+placement.")
    map_version: str | None = Field(description="The exact map version the job used.")
    options: dict[str, Any]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    candidates: list[CandidateOut] = Field(description="Most inliers first.")
    profile_used: str | None = Field(
        default=None,
        description="The profile that ran: fast when accurate was asked of a map without a"
        " fine set (profile_note says why).",
    )
    profile_note: str | None = Field(
        default=None,
        description="Why the profile that ran is not the one asked, or what it lacked (e.g. a"
        " fit of the fine stage).",
    )
    calibrated: bool | None = Field(
        default=None,
        description="True: the confidence is P(error < 5) by the map's fit (fit_id); False:"
        " a raw score, as on a map never fitted, and localised is not calibrated either.",
    )
    fit_id: str | None = Field(
        default=None, description="The map's fit that answered (None: the map is unfitted)."
    )
    heading: float | None = Field(
        default=None,
        description="Which way the camera faced, radians in the map's frame (from its x axis"
        " towards its y axis), where placement gave a position between references; None"
        " otherwise.",
    )
    photos: int = Field(
        default=1, description="How many photos the job localised: 2 to 8 for a photo set."
    )
    set_photos: list[SetPhotoOut] = Field(
        default_factory=list,
        description="A photo set's photos in order, each with its yaw and its own answer; empty"
        " for a single photo and in listings.",
    )


class JobPage(BaseModel):
    jobs: list[JobOut] = Field(description="Newest first, without candidates.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class MapSummary(BaseModel):
    name: str
    num_references: int
    extractor: dict[str, Any]
    retriever: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ReferenceOut(BaseModel):
    id: str
    x: float
    y: float


class BuildOut(BaseModel):
    id: str
    status: str
    total: int
    processed: int
    added: int
    skipped: int
    failed: int = Field(description="Photos that could not be added.")
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class FineSetOut(BaseModel):
    extractor: dict[str, Any] = Field(description="The fine stage's extractor and settings.")
    references: int = Field(description="References that have fine features so far.")


class GeometryOut(BaseModel):
    pair_frames: int = Field(
        description="References whose pair frames are stored (placement reads them instead of"
        " solving its pairs per query; featureloc map geometry)."
    )
    pose: int = Field(
        description="References with a heading and 3D points (placement_conf.method pose;"
        " featureloc map geometry --pose)."
    )


class FitOut(BaseModel):
    fitted_at: datetime
    heldout_queries: int = Field(description="Held-out positions the fit measured.")
    heldout_mae: float = Field(description="MAE on them, as the accurate profile answers.")
    heldout_coarse_mae: float = Field(description="MAE on them, coarse stage only.")
    escalate_below: float | None = Field(
        description="Coarse confidence below which the accurate profile runs the fine stage;"
        " None: the fit has no fine part (fine_missing says why) and the default is used."
    )
    fine_missing: str | None = Field(description="Why the fine stage was not fitted.")


class MapDetail(MapSummary):
    camera: dict[str, Any] | None = Field(description="Intrinsics of the reference photos.")
    geometry: GeometryOut | None = Field(
        default=None, description="What the map stores for placement; None: no camera."
    )
    fine_set: FineSetOut | None = Field(
        default=None, description="The fine feature set; None: the accurate profile runs as fast."
    )
    fit: FitOut | None = Field(
        default=None,
        description="What the map fitted on its held-out positions; None: never fitted, so"
        " confidences are raw scores, not probabilities.",
    )
    reference_photos: bool = Field(description="The API can show the reference photos.")
    references: list[ReferenceOut]
    builds: list[BuildOut] = Field(description="Builds run on the workers, newest first.")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
