"""Caller ID towards carriers: an extension's chosen outbound number (one of its
tenant's DIDs) and whether it withholds it; whether a trunk's carrier gets
P-Asserted-Identity (RFC 3325: only carriers that trust the PBX).

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("extensions") as batch:
        batch.add_column(sa.Column("caller_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("withhold_caller_id", sa.Boolean(), nullable=True))
    with op.batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("assert_identity", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trunks") as batch:
        batch.drop_column("assert_identity")
    with op.batch_alter_table("extensions") as batch:
        batch.drop_column("withhold_caller_id")
        batch.drop_column("caller_id")
