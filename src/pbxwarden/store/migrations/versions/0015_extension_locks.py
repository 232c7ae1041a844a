"""Extension locks after distributed password guessing, and per-extension permission to
use its credentials from a trunk's address.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "extension_locks",
        sa.Column(
            "extension_id",
            sa.Integer(),
            sa.ForeignKey("extensions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("until", sa.Float(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sources", sa.Text(), nullable=False),
        sa.Column("lifted_by", sa.String(128), nullable=True),
    )
    with op.batch_alter_table("extensions") as batch:
        batch.add_column(sa.Column("trunk_access", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("extensions") as batch:
        batch.drop_column("trunk_access")
    op.drop_table("extension_locks")
