"""Each photo of a set keeps its own answer (x, y, localised, heading) beside the set's, so the
job page can show where every photo alone would have put the set, and which way it faced.

Revision ID: 0012_job_photo_answers
Revises: 0011_job_photos
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_job_photo_answers"
down_revision: str | None = "0011_job_photos"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("x", "y", "localised", "heading")


def upgrade() -> None:
    with op.batch_alter_table("job_photos") as batch:
        batch.add_column(sa.Column("x", sa.Float(), nullable=True))
        batch.add_column(sa.Column("y", sa.Float(), nullable=True))
        batch.add_column(sa.Column("localised", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("heading", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_photos") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
