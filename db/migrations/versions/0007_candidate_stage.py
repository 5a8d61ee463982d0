"""candidate_matches.stage: "coarse" (the shortlist) or "fine" (re-verified by the fine stage,
core/finestage.py); a reference may appear once per stage.

Revision ID: 0007_candidate_stage
Revises: 0006_dead_letters
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_candidate_stage"
down_revision: str | None = "0006_dead_letters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("candidate_matches") as batch:
        batch.add_column(sa.Column("stage", sa.String(16), nullable=False, server_default="coarse"))
        batch.drop_constraint("uq_candidate_matches_job_id_reference_id", type_="unique")
        batch.create_unique_constraint(
            "uq_candidate_matches_job_id_stage_reference_id", ["job_id", "stage", "reference_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("candidate_matches") as batch:
        batch.drop_constraint("uq_candidate_matches_job_id_stage_reference_id", type_="unique")
        batch.execute("DELETE FROM candidate_matches WHERE stage <> 'coarse'")
        batch.create_unique_constraint(
            "uq_candidate_matches_job_id_reference_id", ["job_id", "reference_id"]
        )
        batch.drop_column("stage")
