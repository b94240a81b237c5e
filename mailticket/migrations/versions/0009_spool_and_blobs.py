"""The intake spool that daemons share (`[service] spool`), and blobs kept in the database
(`[service] blob_store = "postgres"`)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "spool",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("mailbox", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=700), nullable=False),
        sa.Column("position", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("tried", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("claimed_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.UniqueConstraint("mailbox", "position"),
    )
    op.create_table(
        "spool_keys",
        sa.Column("spool_id", sa.BigInteger(), primary_key=True),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=1000), primary_key=True),
    )
    op.create_index("ix_spool_keys_key", "spool_keys", ["key", "spool_id"])


def downgrade() -> None:
    op.drop_index("ix_spool_keys_key", table_name="spool_keys")
    op.drop_table("spool_keys")
    op.drop_table("spool")
    op.drop_table("blobs")
