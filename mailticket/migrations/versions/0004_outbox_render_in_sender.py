"""Outbox rows hold a notice's inputs; the sender renders them

A notice is queued with its template context (new JSON column `context`) and rendered when
the sender first claims it, so `mail_from`, `subject`, `message_id` and `raw` stay empty
until then. Rows queued before this revision are already rendered and keep a NULL context.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_RENDERED = {
    "mail_from": sqlmodel.sql.sqltypes.AutoString(length=320),
    "subject": sa.Text(),
    "message_id": sqlmodel.sql.sqltypes.AutoString(length=998),
    "raw": sa.LargeBinary(),
}


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.add_column(sa.Column("context", sa.JSON(), nullable=True))
        for name, type_ in _RENDERED.items():
            batch_op.alter_column(name, existing_type=type_, nullable=True)


def downgrade() -> None:
    # Rows not rendered yet cannot satisfy the old NOT NULL columns: an upgraded database
    # must be flushed (or its queued rows deleted) before going back.
    with op.batch_alter_table("outbox") as batch_op:
        for name, type_ in _RENDERED.items():
            batch_op.alter_column(name, existing_type=type_, nullable=False)
        batch_op.drop_column("context")
