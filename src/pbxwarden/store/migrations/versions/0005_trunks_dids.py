"""Trunks, DIDs, and destination details in CDRs.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trunks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "tenant_id",
            sa.Integer(),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("prefixes", sa.Text(), nullable=False),
        sa.UniqueConstraint("tenant_id", "name"),
    )
    op.create_table(
        "dids",
        sa.Column("number", sa.String(32), primary_key=True),
        sa.Column(
            "tenant_id",
            sa.Integer(),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("extension", sa.String(32), nullable=False),
    )
    with op.batch_alter_table("cdrs") as batch:
        batch.add_column(sa.Column("callee_e164", sa.String(32), nullable=True))
        batch.add_column(sa.Column("dest_country", sa.String(8), nullable=True))
        batch.add_column(sa.Column("number_type", sa.String(24), nullable=True))
        batch.add_column(sa.Column("trunk", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cdrs") as batch:
        for column in ("trunk", "number_type", "dest_country", "callee_e164"):
            batch.drop_column(column)
    op.drop_table("dids")
    op.drop_table("trunks")
