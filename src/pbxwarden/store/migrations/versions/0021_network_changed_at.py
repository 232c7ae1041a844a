"""When each extension network row last changed (recorded or approved): running
servers read only the rows changed since they last looked, not every extension's
networks whenever one is added.

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("extension_networks") as batch:
        batch.add_column(sa.Column("changed_at", sa.Float(), nullable=True))
    op.execute("UPDATE extension_networks SET changed_at = first_seen")
    op.create_index("ix_extension_networks_changed_at", "extension_networks", ["changed_at"])


def downgrade() -> None:
    op.drop_index("ix_extension_networks_changed_at", "extension_networks")
    with op.batch_alter_table("extension_networks") as batch:
        batch.drop_column("changed_at")
