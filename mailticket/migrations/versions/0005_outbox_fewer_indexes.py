"""Drop three outbox indexes no query uses

`outbox.message_id`, `created_at` and `next_attempt_at` were indexed from the start, but
the queries that touch them reach their rows through other indexes: the loop-safety caps
through `to_addr` and `ticket_id`, the claim through `status`, the thread look-up through
`ticket_id`. Every notice paid for them three times (queued, rendered, sent), and on
PostgreSQL each of those updates is a new row version in every index.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_outbox_message_id": "message_id",
    "ix_outbox_created_at": "created_at",
    "ix_outbox_next_attempt_at": "next_attempt_at",
}


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        for name in INDEXES:
            batch_op.drop_index(name)


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        for name, column in INDEXES.items():
            batch_op.create_index(name, [column], unique=False)
