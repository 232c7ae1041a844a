"""Learned guard baselines, so a restart does not make every extension a stranger.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guard_baselines",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("extension", sa.String(32), primary_key=True),  # "" for the tenant's own
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("guard_baselines")
