"""Whether a trunk's carrier may ask the PBX to transfer a call (REFER from a carrier
leg): off unless an admin turns it on, since the PBX then places the target call.

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("accept_transfers", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trunks") as batch:
        batch.drop_column("accept_transfers")
