"""Keyed SIP password fingerprints, so that the security audit can see a reused password.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: existing extensions have none until their password is next set
    with op.batch_alter_table("extensions") as batch:
        batch.add_column(sa.Column("password_fingerprint", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("extensions") as batch:
        batch.drop_column("password_fingerprint")
