"""jobs.profile_used, profile_note, calibrated, fit_id: the profile that actually ran (and why
it is not the one asked), whether the confidence is calibrated, and which fit of the map
answered (core/heldout.py).

Revision ID: 0009_job_fit
Revises: 0008_job_figure_inliers
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_job_fit"
down_revision: str | None = "0008_job_figure_inliers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("profile_used", sa.String(16), nullable=True))
        batch.add_column(sa.Column("profile_note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("calibrated", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("fit_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in ("fit_id", "calibrated", "profile_note", "profile_used"):
            batch.drop_column(column)
