"""Ring and hunt groups: a number of the tenant's dialplan ringing several members.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ring_groups",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "tenant_id", sa.Integer(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), index=True
        ),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("members", sa.Text(), nullable=False),
        sa.Column("ring_time", sa.Float(), nullable=False),
        sa.Column("fallback", sa.String(32), nullable=True),
        sa.Column("cid_prefix", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("tenant_id", "number"),
    )


def downgrade() -> None:
    op.drop_table("ring_groups")
