"""Drop three indexes every new ticket wrote and no query read

`participants.ticket_id` duplicates the first column of the unique (ticket_id, email)
index, which serves the look-ups by ticket; `participants.email` and `entries.message_id`
were never searched on their own (threading goes through `message_refs`).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = {
    "participants": {"ix_participants_ticket_id": "ticket_id", "ix_participants_email": "email"},
    "entries": {"ix_entries_message_id": "message_id"},
}


def upgrade() -> None:
    for table, indexes in INDEXES.items():
        with op.batch_alter_table(table) as batch_op:
            for name in indexes:
                batch_op.drop_index(name)


def downgrade() -> None:
    for table, indexes in INDEXES.items():
        with op.batch_alter_table(table) as batch_op:
            for name, column in indexes.items():
                batch_op.create_index(name, [column], unique=False)
