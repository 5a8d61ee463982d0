"""SQLAlchemy 2.0 models. Portable across SQLite and PostgreSQL.

The hand-written migration in ``db/migrations/versions`` must match these; ``tests/db/test_db.py``
checks that with alembic's ``compare_metadata`` on both backends.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.types import UTCDateTime, utcnow

# Explicit constraint names so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MAP_NAME_LENGTH = 64
JOB_ID_LENGTH = 64
IMAGE_KEY_LENGTH = 128
REF_ID_LENGTH = 255
WORKER_LENGTH = 255
MATCHER_LENGTH = 64
MAP_VERSION_LENGTH = 64
METHOD_LENGTH = 64
PROFILE_LENGTH = 16
FIT_ID_LENGTH = 32
STATUS_LENGTH = 16


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# Stored as a plain string with a CHECK: portable, and adding a status is a one-line migration.
STATUS_CHECK_SQL = "status IN ({})".format(", ".join(f"'{s.value}'" for s in JobStatus))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Map(Base):
    """A named set of reference photos with known positions; features live in the map store."""

    __tablename__ = "maps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAP_NAME_LENGTH), unique=True)
    # {"name": ..., "conf": {...}} of the extractor / retriever the map was built with.
    extractor: Mapped[dict[str, Any]]
    retriever: Mapped[dict[str, Any]]
    num_references: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    references: Mapped[list[ReferenceImage]] = relationship(
        back_populates="map", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"Map(name={self.name!r}, num_references={self.num_references})"


class ReferenceImage(Base):
    __tablename__ = "reference_images"
    __table_args__ = (UniqueConstraint("map_id", "ref_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    map_id: Mapped[int] = mapped_column(ForeignKey("maps.id", ondelete="CASCADE"))
    ref_id: Mapped[str] = mapped_column(String(REF_ID_LENGTH))
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)

    map: Mapped[Map] = relationship(back_populates="references")


class Job(Base):
    """One query photo localised against one map."""

    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(STATUS_CHECK_SQL, name="status"),)

    # Derived by the client from (map, image hash, options), so a resubmission lands here again.
    id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    map_name: Mapped[str] = mapped_column(String(MAP_NAME_LENGTH), index=True)
    # Content hash of the query image in the blob store.
    image_key: Mapped[str] = mapped_column(String(IMAGE_KEY_LENGTH))
    options: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(
        String(STATUS_LENGTH), index=True, default=JobStatus.PENDING.value
    )
    estimate_x: Mapped[float | None] = mapped_column(Float)
    estimate_y: Mapped[float | None] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)
    localised: Mapped[bool | None]
    error: Mapped[str | None] = mapped_column(Text)
    # Seconds per stage, e.g. {"decode": 0.01, "extract": 0.3, ...}.
    timings: Mapped[dict[str, Any] | None]
    worker: Mapped[str | None] = mapped_column(String(WORKER_LENGTH))
    matcher: Mapped[str | None] = mapped_column(String(MATCHER_LENGTH))
    # How the estimate was made: the estimator, "+placement" when pairwise geometry placed it,
    # "+pose" when one pose against the map's geometry did (core/geometry.py).
    method: Mapped[str | None] = mapped_column(String(METHOD_LENGTH))
    # With "+placement" or "+pose": the heading (radians, map frame); "+pose": its 2D-3D inliers.
    heading: Mapped[float | None] = mapped_column(Float)
    pose_inliers: Mapped[int | None] = mapped_column(Integer)
    # The exact map version the estimate came from (workers/mapversions.py).
    map_version: Mapped[str | None] = mapped_column(String(MAP_VERSION_LENGTH))
    # The profile that ran (may differ from the one asked: profile_note says why), whether the
    # confidence is calibrated by the map's fit, and which fit (core.mapstore.ReferenceMap.fit).
    profile_used: Mapped[str | None] = mapped_column(String(PROFILE_LENGTH))
    profile_note: Mapped[str | None] = mapped_column(Text)
    calibrated: Mapped[bool | None]
    fit_id: Mapped[str | None] = mapped_column(String(FIT_ID_LENGTH))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Refreshed by the process running the job; a running job whose heartbeat stopped lost its
    # worker and is re-sent (workers/recovery.py), a long job with a fresh one is left alone.
    heartbeat_at: Mapped[datetime | None]
    # The inliers its figure draws (core/draw.py pack_inliers; a few kB): loaded when asked.
    figure_inliers: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)

    candidates: Mapped[list[CandidateMatch]] = relationship(
        back_populates="job",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="(CandidateMatch.inliers.desc(), CandidateMatch.rank)",
    )

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, map_name={self.map_name!r}, status={self.status!r})"


class CandidateMatch(Base):
    """Evidence for one shortlisted reference of a job: retrieval, matching and geometry.

    One column per key of ``core.types.CandidateResult.to_row()`` (the one candidate schema).
    """

    __tablename__ = "candidate_matches"
    __table_args__ = (UniqueConstraint("job_id", "photo", "stage", "reference_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    reference_id: Mapped[str] = mapped_column(String(REF_ID_LENGTH))
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)
    retrieval_score: Mapped[float] = mapped_column(Float)
    query_keypoints: Mapped[int] = mapped_column(Integer)
    reference_keypoints: Mapped[int] = mapped_column(Integer)
    tentative_matches: Mapped[int] = mapped_column(Integer)
    inliers: Mapped[int] = mapped_column(Integer)
    inlier_ratio: Mapped[float] = mapped_column(Float)
    mean_match_score: Mapped[float] = mapped_column(Float)
    # "coarse" (the shortlist) or "fine" (re-verified by core/finestage.py)
    stage: Mapped[str] = mapped_column(String(16), default="coarse", server_default="coarse")
    # The photo of the job's set (0-based) this evidence is for; 0 for a single-photo job.
    photo: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    job: Mapped[Job] = relationship(back_populates="candidates")


class JobPhoto(Base):
    """One photo of a photo-set job (core/photoset.py), in the set's order. A single-photo job
    has no rows here: its photo is ``jobs.image_key``, which for a set is its first photo's."""

    __tablename__ = "job_photos"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_key: Mapped[str] = mapped_column(String(IMAGE_KEY_LENGTH))
    # Degrees relative to the set's first photo, when the caller knew them.
    yaw_deg: Mapped[float | None] = mapped_column(Float)
    # core.camera.Camera fields of this photo, when it has its own.
    camera: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # This photo's own answer once the job is done (the set's is on the job): where it alone
    # localised (or its guess), and its heading in radians where placement gave one.
    x: Mapped[float | None] = mapped_column(Float)
    y: Mapped[float | None] = mapped_column(Float)
    localised: Mapped[bool | None]
    heading: Mapped[float | None] = mapped_column(Float)


TASK_NAME_LENGTH = 255
MESSAGE_ID_LENGTH = 255


class DeadLetter(Base):
    """A message no job could be made of (bad arguments, a conflicting re-send of a job id):
    kept with its raw arguments and the reason, for a person to read (``featureloc jobs
    dead-letters``). When the job id was usable the job row says why instead, unless the row
    belongs to another request (a conflicting re-send), which is then named in ``job_id``."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(TASK_NAME_LENGTH))
    message_id: Mapped[str | None] = mapped_column(String(MESSAGE_ID_LENGTH))
    job_id: Mapped[str | None] = mapped_column(String(JOB_ID_LENGTH), index=True)
    # JSON of {"args": [...], "kwargs": {...}}, cut to MAX_ARGUMENTS_LENGTH characters.
    arguments: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(WORKER_LENGTH))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class BuildStatus(enum.StrEnum):
    RUNNING = "running"  # chunks queued or being extracted
    FINALISING = "finalising"  # every chunk finished; retrieval being fitted
    DONE = "done"
    FAILED = "failed"  # finalising failed; the parts written so far stay usable


class ChunkStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # the whole chunk failed (its images listed in the build's ``failed``)


BUILD_ID_LENGTH = 32
BUILD_STATUS_CHECK_SQL = "status IN ({})".format(", ".join(f"'{s.value}'" for s in BuildStatus))
CHUNK_STATUS_CHECK_SQL = "status IN ({})".format(", ".join(f"'{s.value}'" for s in ChunkStatus))


class MapBuild(Base):
    """A map build (or extension) split into chunks that workers extract in parallel.

    The chunk that finishes last (counted under this row's lock) moves the build to
    ``finalising`` and queues the one finalise step, so it runs exactly once.
    """

    __tablename__ = "map_builds"
    __table_args__ = (CheckConstraint(BUILD_STATUS_CHECK_SQL, name="status"),)

    id: Mapped[str] = mapped_column(String(BUILD_ID_LENGTH), primary_key=True)
    map_name: Mapped[str] = mapped_column(String(MAP_NAME_LENGTH), index=True)
    status: Mapped[str] = mapped_column(String(STATUS_LENGTH), default=BuildStatus.RUNNING.value)
    extractor: Mapped[dict[str, Any]]  # {"name": ..., "conf": {...}}
    retriever: Mapped[dict[str, Any]]
    total: Mapped[int] = mapped_column(Integer)  # images planned
    processed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    added: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    skipped: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # {image id: reason} of every image that could not be added.
    failed: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    chunks: Mapped[list[MapBuildChunk]] = relationship(
        back_populates="build",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="MapBuildChunk.index",
    )


class MapBuildChunk(Base):
    __tablename__ = "map_build_chunks"
    __table_args__ = (CheckConstraint(CHUNK_STATUS_CHECK_SQL, name="status"),)

    build_id: Mapped[str] = mapped_column(
        ForeignKey("map_builds.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(STATUS_LENGTH), default=ChunkStatus.PENDING.value)
    added: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    worker: Mapped[str | None] = mapped_column(String(WORKER_LENGTH))
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]

    build: Mapped[MapBuild] = relationship(back_populates="chunks")


API_KEY_NAME_LENGTH = 64
API_KEY_HASH_LENGTH = 64  # sha256 hex digest of the token


class ApiKey(Base):
    """A key for the HTTP API (``api/``). Only the token's SHA-256 is stored: the token itself is
    shown once, when created, and cannot be recovered from the database."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(API_KEY_NAME_LENGTH), unique=True)
    token_hash: Mapped[str] = mapped_column(String(API_KEY_HASH_LENGTH), unique=True)
    # Map names the key may use; None: every map.
    maps: Mapped[list[str] | None] = mapped_column(JSON)
    # Requests per minute; None: the server's default (``Settings.api_rate_limit``).
    rate_limit: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows(self, map_name: str) -> bool:
        return self.maps is None or map_name in self.maps
