"""Networks each extension registered from (registration watch).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "extension_networks",
        sa.Column(
            "extension_id",
            sa.Integer(),
            sa.ForeignKey("extensions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("network", sa.String(64), primary_key=True),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("extension_networks")
