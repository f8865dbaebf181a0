"""Review console: who made a correction and what they decided, and the ranked alternatives of a triage result.

corrections.actor is the console user (or the ITSM's user, where a connector reports one); corrections.decision is
accept | correct | dismiss for decisions made in the console, NULL for a field change reported by the ITSM.
triage_results.alternatives holds each enum field's values ranked by probability, with the model that scored them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Nullable columns only: a plain ADD COLUMN on SQLite and PostgreSQL alike, no table rebuild.
    op.add_column("corrections", sa.Column("actor", sa.String(255), nullable=True))
    op.add_column("corrections", sa.Column("decision", sa.String(16), nullable=True))
    op.add_column("triage_results", sa.Column("alternatives", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("triage_results") as batch:
        batch.drop_column("alternatives")
    with op.batch_alter_table("corrections") as batch:
        batch.drop_column("decision")
        batch.drop_column("actor")
