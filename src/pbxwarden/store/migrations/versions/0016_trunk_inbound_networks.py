"""Trunks by DNS name: the networks a carrier's calls may also come from.

A trunk's host may now be a DNS name (no schema change: port 0 stands for "from SRV",
transport "auto" for "as NAPTR says"); a carrier that sends from addresses its DNS does
not name lists them in ``inbound_from``.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("inbound_from", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trunks") as batch:
        batch.drop_column("inbound_from")
