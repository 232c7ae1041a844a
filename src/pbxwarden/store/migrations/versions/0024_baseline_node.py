"""Learned baselines per node: nodes sharing one database each store what they learned
in their own row and merge the others' (``pbxwarden.baseline_sync``). Existing rows
become node "" (a single node's), claimed by the first node of a cluster that loads them.

The primary key changes, so the table is made again (the same on SQLite and PostgreSQL).

Revision ID: 0024
Revises: 0023
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guard_baselines_new",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("extension", sa.String(32), primary_key=True),
        sa.Column("node", sa.String(64), primary_key=True, server_default=""),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.execute(
        "INSERT INTO guard_baselines_new (tenant, extension, node, data, updated_at) "
        "SELECT tenant, extension, '', data, updated_at FROM guard_baselines"
    )
    op.drop_table("guard_baselines")
    op.rename_table("guard_baselines_new", "guard_baselines")


def downgrade() -> None:
    """One row per key again: a single node's (node "") if there is one, else the one
    saved last (the other nodes' learning is dropped)."""
    op.create_table(
        "guard_baselines_old",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("extension", sa.String(32), primary_key=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.execute(
        "INSERT INTO guard_baselines_old (tenant, extension, data, updated_at) "
        "SELECT b.tenant, b.extension, b.data, b.updated_at FROM guard_baselines b "
        "WHERE b.node = (SELECT c.node FROM guard_baselines c "
        "WHERE c.tenant = b.tenant AND c.extension = b.extension "
        "ORDER BY c.node <> '', c.updated_at DESC, c.node LIMIT 1)"
    )
    op.drop_table("guard_baselines")
    op.rename_table("guard_baselines_old", "guard_baselines")
