"""Photo sets (core/photoset.py): job_photos lists every photo of a set job in order, with its
yaw and camera when given; candidate_matches.photo says which photo a row is evidence for
(0 for single-photo jobs, so existing rows stay valid), and a reference may appear once per
photo and stage.

Revision ID: 0011_job_photos
Revises: 0010_job_pose
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_job_photos"
down_revision: str | None = "0010_job_pose"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_photos",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("image_key", sa.String(128), nullable=False),
        sa.Column("yaw_deg", sa.Float(), nullable=True),
        sa.Column("camera", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_photos_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "index", name="pk_job_photos"),
    )
    with op.batch_alter_table("candidate_matches") as batch:
        batch.add_column(
            sa.Column("photo", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.drop_constraint("uq_candidate_matches_job_id_stage_reference_id", type_="unique")
        batch.create_unique_constraint(
            "uq_candidate_matches_job_id_photo_stage_reference_id",
            ["job_id", "photo", "stage", "reference_id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("candidate_matches") as batch:
        batch.drop_constraint(
            "uq_candidate_matches_job_id_photo_stage_reference_id", type_="unique"
        )
        batch.execute("DELETE FROM candidate_matches WHERE photo <> 0")
        batch.create_unique_constraint(
            "uq_candidate_matches_job_id_stage_reference_id", ["job_id", "stage", "reference_id"]
        )
        batch.drop_column("photo")
    op.drop_table("job_photos")
