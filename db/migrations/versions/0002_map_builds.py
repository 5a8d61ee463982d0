"""Map builds split into chunks: map_builds, map_build_chunks.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "map_builds",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("map_name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("extractor", sa.JSON(), nullable=False),
        sa.Column("retriever", sa.JSON(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("added", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("skipped", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'finalising', 'done', 'failed')", name="ck_map_builds_status"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_map_builds"),
    )
    op.create_index("ix_map_builds_map_name", "map_builds", ["map_name"])
    op.create_table(
        "map_build_chunks",
        sa.Column("build_id", sa.String(32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("added", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed')",
            name="ck_map_build_chunks_status",
        ),
        sa.ForeignKeyConstraint(
            ["build_id"],
            ["map_builds.id"],
            name="fk_map_build_chunks_build_id_map_builds",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("build_id", "index", name="pk_map_build_chunks"),
    )


def downgrade() -> None:
    op.drop_table("map_build_chunks")
    op.drop_index("ix_map_builds_map_name", table_name="map_builds")
    op.drop_table("map_builds")
