"""Engine creation and schema migration.

A new or old database is brought to the current schema by Alembic on start;
on PostgreSQL an advisory lock makes concurrent starts take turns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import OperationalError

from mailticket.errors import DatabaseUnavailable

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
BUSY_TIMEOUT_MS = 30_000  # how long a SQLite writer waits for the lock before "database is locked"
_MIGRATION_LOCK = 0x6D61696C  # "mail": any constant shared by all mailticket processes


def make_engine(url: str) -> Engine:
    """An engine whose "database down, unreachable, locked, full" errors are `DatabaseUnavailable`."""
    engine = _engine(url)
    where = engine.url.render_as_string(hide_password=True)

    @event.listens_for(engine, "handle_error")
    def _unavailable(context: ExceptionContext) -> BaseException | None:
        # The one place database errors are mapped. Pre-ping probes are left alone (the pool
        # reconnects on them); an IntegrityError stays itself (the pipeline retries on it).
        if context.is_pre_ping or not isinstance(context.sqlalchemy_exception, OperationalError):
            return None
        first_line = str(context.original_exception).strip().splitlines()[:1] or ["(no message)"]
        return DatabaseUnavailable(f"database {where}: {first_line[0]}")

    return engine


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the CLI read while the daemon writes; foreign keys are off by default.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # 32 MB of page cache instead of 2 MB: the look-up indexes (Message-IDs, intake keys,
            # refs) stay in memory as the database grows past what 2 MB holds.
            cur.execute("PRAGMA cache_size=-32768")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def upsert(dialect: str, table: Table) -> sqlite.Insert | postgresql.Insert:
    """An INSERT with `.on_conflict_do_nothing()` / `.on_conflict_do_update()`, which both databases have."""
    if dialect == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Upgrade to head. Idempotent and cheap when already current."""
    cfg = alembic_config(engine)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            # A session-level lock outlives the migration's own transaction, which
            # rolls back whole on failure: PostgreSQL has transactional DDL.
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
            conn.commit()
            try:
                with conn.begin():
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                conn.commit()
        return
    with engine.begin() as conn:
        # pysqlite runs DDL outside any transaction; an explicit BEGIN makes the whole
        # upgrade atomic, so a process killed mid-migration leaves the old schema intact.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
