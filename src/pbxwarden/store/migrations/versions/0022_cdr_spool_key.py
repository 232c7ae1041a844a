"""A CDR written from the node's local spool (the database was unreachable when the
call started or ended) carries the spool's key for it, unique, so that replaying the
spool after a crash in the middle of a replay never writes a call twice.

Revision ID: 0022
Revises: 0021
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cdrs") as batch:
        batch.add_column(sa.Column("spool_key", sa.String(64), nullable=True))
    op.create_index("ix_cdrs_spool_key", "cdrs", ["spool_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_cdrs_spool_key", "cdrs")
    with op.batch_alter_table("cdrs") as batch:
        batch.drop_column("spool_key")
