"""Call forwarding per extension, its change log, and the diversion chain in CDRs.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("extensions") as batch:
        batch.add_column(sa.Column("forward_always", sa.String(64), nullable=True))
        batch.add_column(sa.Column("forward_busy", sa.String(64), nullable=True))
        batch.add_column(sa.Column("forward_noanswer", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("noanswer_after", sa.Float(), nullable=False, server_default="20")
        )
    with op.batch_alter_table("cdrs") as batch:
        batch.add_column(sa.Column("forwarded_by", sa.String(255), nullable=True))
    op.create_table(
        "forwarding_changes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "extension_id",
            sa.Integer(),
            sa.ForeignKey("extensions.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("old_target", sa.String(64), nullable=True),
        sa.Column("new_target", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("at", sa.Float(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("forwarding_changes")
    with op.batch_alter_table("cdrs") as batch:
        batch.drop_column("forwarded_by")
    with op.batch_alter_table("extensions") as batch:
        for column in ("noanswer_after", "forward_noanswer", "forward_busy", "forward_always"):
            batch.drop_column(column)
