"""Which node handled each call: nodes sharing one database close only their own open
CDRs at start-up, and a survivor closes a lost node's (``cluster/takeover.py``).

Revision ID: 0023
Revises: 0022
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cdrs") as batch:
        batch.add_column(sa.Column("node", sa.String(64), nullable=True))
    op.create_index("ix_cdrs_node", "cdrs", ["node"])


def downgrade() -> None:
    op.drop_index("ix_cdrs_node", "cdrs")
    with op.batch_alter_table("cdrs") as batch:
        batch.drop_column("node")
