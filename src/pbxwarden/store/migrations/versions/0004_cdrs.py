"""Call detail records.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cdrs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("call_id", sa.String(255), nullable=False, index=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("extension", sa.String(32), nullable=True),
        sa.Column("caller", sa.String(128), nullable=False),
        sa.Column("callee", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("disposition", sa.String(16), nullable=False, index=True),
        sa.Column("sip_code", sa.Integer(), nullable=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("start_ts", sa.Float(), nullable=False, index=True),
        sa.Column("answer_ts", sa.Float(), nullable=True),
        sa.Column("end_ts", sa.Float(), nullable=True),
        sa.Column("duration", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("cdrs")
