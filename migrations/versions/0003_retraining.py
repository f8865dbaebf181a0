"""Retraining: a named lock row shared by instances, and the record of every retraining run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "locks",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("acquired_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_locks")),
    )
    op.create_table(
        "retrain_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("since", TS, nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=True),
        sa.Column("challenger_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_runs")),
        sa.ForeignKeyConstraint(["challenger_id"], ["model_versions.id"], ondelete="SET NULL",
                                name=op.f("fk_retrain_runs_challenger_id_model_versions")),
        sa.CheckConstraint("state IN ('running', 'promoted', 'kept', 'failed', 'dry-run')",
                           name=op.f("ck_retrain_runs_state")),
    )
    op.create_index(op.f("ix_retrain_runs_started_at"), "retrain_runs", ["started_at"])


def downgrade() -> None:
    op.drop_table("retrain_runs")
    op.drop_table("locks")
