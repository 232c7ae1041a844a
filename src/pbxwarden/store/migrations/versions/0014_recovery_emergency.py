"""Recovery after a compromise and emergency calls: when a SIP password last changed,
who suspended an extension, when each contact first registered, refused forwarding
changes, the emergency trunk.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("extensions") as batch:
        batch.add_column(sa.Column("password_changed_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("suspended_by", sa.String(64), nullable=True))
    with op.batch_alter_table("registrations") as batch:
        batch.add_column(sa.Column("registered_at", sa.Float(), nullable=True))
    with op.batch_alter_table("forwarding_changes") as batch:
        batch.add_column(sa.Column("refused", sa.Text(), nullable=True))
    with op.batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("emergency", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trunks") as batch:
        batch.drop_column("emergency")
    with op.batch_alter_table("forwarding_changes") as batch:
        batch.drop_column("refused")
    with op.batch_alter_table("registrations") as batch:
        batch.drop_column("registered_at")
    with op.batch_alter_table("extensions") as batch:
        batch.drop_column("suspended_by")
        batch.drop_column("password_changed_at")
