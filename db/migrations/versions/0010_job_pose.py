"""jobs.heading and jobs.pose_inliers: the query's heading and the 2D-3D inliers of its pose,
where the map's geometry placed it (core/geometry.py, method "...+pose").

Revision ID: 0010_job_pose
Revises: 0009_job_fit
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_job_pose"
down_revision: str | None = "0009_job_fit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heading", sa.Float(), nullable=True))
        batch.add_column(sa.Column("pose_inliers", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pose_inliers")
        batch.drop_column("heading")
