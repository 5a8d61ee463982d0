"""jobs.figure_inliers: the inlier keypoints of the candidates a job's figure shows, kept when
the job ends (core/draw.py pack_inliers), so figures need no model or map. Jobs stored before
have none: their figure is the query alone.

Revision ID: 0008_job_figure_inliers
Revises: 0007_candidate_stage
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_job_figure_inliers"
down_revision: str | None = "0007_candidate_stage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("figure_inliers", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("figure_inliers")
