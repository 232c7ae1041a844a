"""Trunks that authenticate to the carrier: digest credentials and registration.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_COLUMNS = ("register_expires", "register", "realm", "password_sealed", "username")


def upgrade() -> None:
    # nullable: existing trunks stay IP-authenticated, exactly as before
    with op.batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("username", sa.String(128), nullable=True))
        # AES-GCM under a key derived from the install secret (pbxwarden.store.credentials)
        batch.add_column(sa.Column("password_sealed", sa.Text(), nullable=True))
        batch.add_column(sa.Column("realm", sa.String(255), nullable=True))
        batch.add_column(sa.Column("register", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("register_expires", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trunks") as batch:
        for column in _COLUMNS:
            batch.drop_column(column)
