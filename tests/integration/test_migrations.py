"""Schema migrations are atomic: a failure part-way leaves a database that migrates later."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.operations import Operations
from sqlalchemy import inspect

from mailticket.storage.db import make_engine, migrate


def test_interrupted_first_migration_leaves_nothing_behind(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
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
