"""Schema migrations are atomic: a failure part-way leaves a database that migrates later."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from alembic.operations import Operations
from sqlalchemy import Engine, inspect, text

from mailticket.storage.db import alembic_config, make_engine, migrate
from tests.servers import postgres_database


def test_interrupted_first_migration_leaves_nothing_behind(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_url = empty_db_url
    engine = make_engine(db_url)
    real_create = Operations.create_table
    created: list[str] = []

    def create_then_crash(self: Operations, name: str, *cols: Any, **kw: Any) -> Any:
        if len(created) == 3:
            raise KeyboardInterrupt("simulated kill during migration")
        created.append(name)
        return real_create(self, name, *cols, **kw)

    monkeypatch.setattr(Operations, "create_table", create_then_crash)
    with pytest.raises(KeyboardInterrupt):
        migrate(engine)
    assert inspect(engine).get_table_names() == []

    monkeypatch.setattr(Operations, "create_table", real_create)
    migrate(engine)
    migrate(engine)  # idempotent
    assert {"tickets", "entries", "outbox", "leases"} <= set(inspect(engine).get_table_names())
    engine.dispose()


@pytest.mark.postgres
def test_postgres_keeps_spooled_mail_uncompressed_and_blobs_in_lz4() -> None:
    """Migration 0010: pglz on the spool's short-lived, mostly base64 bytes was a fifth of
    PostgreSQL's CPU per message; a downgrade puts the defaults back."""
    with postgres_database() as url:
        engine = make_engine(url)
        migrate(engine)
        lz4 = ("x", "l")
        assert _storage(engine) == {"spool.raw": ("e", ""), "blobs.data": lz4, "outbox.raw": lz4}
        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0009")
        default = ("x", "")
        assert _storage(engine) == {"spool.raw": default, "blobs.data": default, "outbox.raw": default}
        engine.dispose()


def _storage(engine: Engine) -> dict[str, tuple[str, str]]:
    """Each bytea column's storage ('e' external, 'x' extended) and compression ('l' lz4, '' default)."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.relname || '.' || a.attname, a.attstorage, a.attcompression FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid"
            " WHERE (c.relname, a.attname) IN (('spool', 'raw'), ('blobs', 'data'), ('outbox', 'raw'))"
        )).all()
    return {name: (storage, compression) for name, storage, compression in rows}
