"""Index outbox.to_addr

Every automatic notice counts the recipient's recent mail (the loop-safety caps); without
an index that count scans every notice of the last day, quadratic on a busy desk.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_to_addr"), ["to_addr"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_to_addr"))
