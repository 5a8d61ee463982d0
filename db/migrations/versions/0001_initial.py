"""Initial schema: maps, reference images, jobs, candidate matches.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "maps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("extractor", sa.JSON(), nullable=False),
        sa.Column("retriever", sa.JSON(), nullable=False),
        sa.Column("num_references", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_maps"),
        sa.UniqueConstraint("name", name="uq_maps_name"),
    )
    op.create_table(
        "reference_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("map_id", sa.Integer(), nullable=False),
        sa.Column("ref_id", sa.String(255), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["map_id"],
            ["maps.id"],
            name="fk_reference_images_map_id_maps",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_reference_images"),
        sa.UniqueConstraint("map_id", "ref_id", name="uq_reference_images_map_id_ref_id"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("map_name", sa.String(64), nullable=False),
        sa.Column("image_key", sa.String(128), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("estimate_x", sa.Float(), nullable=True),
        sa.Column("estimate_y", sa.Float(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("localised", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("matcher", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed')", name="ck_jobs_status"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_map_name", "jobs", ["map_name"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_table(
        "candidate_matches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("reference_id", sa.String(255), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("retrieval_score", sa.Float(), nullable=False),
        sa.Column("query_keypoints", sa.Integer(), nullable=False),
        sa.Column("reference_keypoints", sa.Integer(), nullable=False),
        sa.Column("tentative_matches", sa.Integer(), nullable=False),
        sa.Column("inliers", sa.Integer(), nullable=False),
        sa.Column("inlier_ratio", sa.Float(), nullable=False),
        sa.Column("mean_match_score", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name="fk_candidate_matches_job_id_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_candidate_matches"),
        sa.UniqueConstraint(
            "job_id", "reference_id", name="uq_candidate_matches_job_id_reference_id"
        ),
    )
    op.create_index("ix_candidate_matches_job_id", "candidate_matches", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_candidate_matches_job_id", table_name="candidate_matches")
    op.drop_table("candidate_matches")
    op.drop_index("ix_jobs_created_at", table_name="jobs")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_index("ix_jobs_map_name", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("reference_images")
    op.drop_table("maps")
