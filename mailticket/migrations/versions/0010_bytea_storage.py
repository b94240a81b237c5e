"""PostgreSQL: raw mail in the spool stored uncompressed, blobs and rendered notices with lz4

The spool's raw bytes live for seconds and are mostly base64 already: pglz compressing them
was about a fifth of PostgreSQL's CPU per message (benchmarks/scale.py, docs/benchmarks.md).
Blobs and rendered notices are kept, so they stay compressed, with lz4 where the server has it
(PostgreSQL 14 or newer built with lz4): several times faster than the default pglz. Both are
catalogue changes that apply to values written from now on; nothing is rewritten. SQLite has
no such settings.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_KEPT = (("blobs", "data"), ("outbox", "raw"))


def _lz4(bind: sa.Connection) -> bool:
    return bool(
        bind.execute(
            sa.text(
                "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
                " AND 'lz4' = ANY(enumvals)"
            )
        ).first()
    )


def upgrade() -> None:
    _store("EXTERNAL", "lz4")


def downgrade() -> None:
    _store("EXTENDED", "DEFAULT")


def _store(spool_storage: str, kept_compression: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE spool ALTER COLUMN raw SET STORAGE {spool_storage}")
    if _lz4(bind):
        for table, column in _KEPT:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {kept_compression}")
