"""Fraud guard state: alerts with a life cycle, suspended extensions, scored CDRs.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("extension", sa.String(32), nullable=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("dedupe_key", sa.String(255), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.Float(), nullable=False, index=True),
        sa.Column("last_at", sa.Float(), nullable=False),
        sa.Column("acked_by", sa.String(64), nullable=True),
        sa.Column("acked_at", sa.Float(), nullable=True),
        sa.Column("resolved_by", sa.String(64), nullable=True),
        sa.Column("resolved_at", sa.Float(), nullable=True),
    )
    with op.batch_alter_table("extensions") as batch:
        batch.add_column(sa.Column("suspended_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("suspended_at", sa.Float(), nullable=True))
    with op.batch_alter_table("cdrs") as batch:
        batch.add_column(sa.Column("score", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("severity", sa.String(16), nullable=True))
        batch.add_column(sa.Column("cost", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cdrs") as batch:
        batch.drop_column("cost")
        batch.drop_column("severity")
        batch.drop_column("score")
    with op.batch_alter_table("extensions") as batch:
        batch.drop_column("suspended_at")
        batch.drop_column("suspended_reason")
    op.drop_table("alerts")
