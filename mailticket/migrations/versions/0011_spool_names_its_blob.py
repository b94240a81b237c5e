"""A spooled message may name its raw bytes in the blobs table instead of carrying them

With `blob_store = "postgres"` the lease holder stores the raw mail once, as the blob the
stored message will name, and the spool row names it (`raw_sha256`, `raw` empty): the bytes are
written, sent and kept once, not twice (intake/spool.py). Rows spooled before still carry them.
Daemons of an older version must not run on after it: their processors fail on a row without
bytes (docs/operations.md). A downgrade gives each row its bytes back from its blob; a row whose
blob was deleted by hand stops the downgrade (it rolls back whole) until that row is removed.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("spool") as batch:
        batch.add_column(sa.Column("raw_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch.alter_column("raw", existing_type=sa.LargeBinary(), nullable=True)


def downgrade() -> None:
    bind = op.get_bind()
    # A row that names its blob gets its bytes back before the column loses it.
    bind.execute(sa.text(
        "UPDATE spool SET raw = (SELECT data FROM blobs WHERE blobs.sha256 = spool.raw_sha256)"
        " WHERE raw IS NULL"
    ))
    with op.batch_alter_table("spool") as batch:
        batch.alter_column("raw", existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column("raw_sha256")
