"""Alembic environment: the connection comes from mailticket, never from an ini file."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import mailticket.storage.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through mailticket.storage.db.migrate()")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
