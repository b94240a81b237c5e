"""IMAP UIDVALIDITY and UIDs as BIGINT

They are unsigned 32-bit numbers; values above 2**31 - 1 overflow PostgreSQL's INTEGER.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = {"mailbox_state": ("uidvalidity", "last_uid"), "uid_attempts": ("uidvalidity", "uid")}


def upgrade() -> None:
    for table, columns in _COLUMNS.items():
        with op.batch_alter_table(table) as batch_op:
            for column in columns:
                batch_op.alter_column(column, type_=sa.BigInteger(), existing_type=sa.Integer(),
                                      existing_nullable=False)


def downgrade() -> None:
    for table, columns in _COLUMNS.items():
        with op.batch_alter_table(table) as batch_op:
            for column in columns:
                batch_op.alter_column(column, type_=sa.Integer(), existing_type=sa.BigInteger(),
                                      existing_nullable=False)
