"""Engine creation and schema migration.

A new or old database is brought to the current schema by Alembic on start;
on PostgreSQL an advisory lock makes concurrent starts take turns.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Executable, Table, create_engine, event, inspect, select, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from mailticket.errors import DatabaseUnavailable, SchemaConflict

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.dialects import postgresql, sqlite

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
BUSY_TIMEOUT_MS = 30_000  # how long a SQLite writer waits for the lock before "database is locked"
PING_IDLE_SECONDS = 1.0  # a pooled PostgreSQL connection idle longer is pinged before use
# A daemon beats every 5 s (service/health.py): one whose last beat is younger than this runs
# (the default `[health] heartbeat_max_age`; more than SQLite's busy timeout and a clean stop).
RUNNING_WITHIN = timedelta(seconds=60)
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
    engine = create_engine(url, pool_use_lifo=True)

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        # A connection back from the pool within PING_IDLE_SECONDS was working a moment ago; one
        # idle longer (the server may have restarted, a firewall dropped it) is pinged first, and
        # a dead one replaced by a new connection before anyone uses it. Busy threads take the
        # hot end of the pool (LIFO), so under load no checkout costs a round trip.
        idle_since = record.info.get("idle_since")  # None: a new connection
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:  # the pool reconnects on this
            raise DisconnectionError(f"ping failed: {exc}") from exc

    return engine


def upsert(dialect: str, table: Table) -> sqlite.Insert | postgresql.Insert:
    """An INSERT with `.on_conflict_do_nothing()` / `.on_conflict_do_update()`, which both databases have.

    Only the dialect in use is imported: a SQLite desk never loads PostgreSQL's (and asyncpg's) modules."""
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)
    from sqlalchemy.dialects import postgresql

    return postgresql.insert(table)


_REVISION = re.compile(r"^(down_)?revision\s*(?::[^=]*)?=\s*(?:[\"'](\w+)[\"']|None)", re.M)


def head_revisions() -> set[str]:
    """The newest migrations, read from the files' `revision`/`down_revision` lines: without
    importing Alembic (a quarter of a second), so a start on a current schema stays fast."""
    revisions, parents = _revision_graph()
    return set(revisions - parents)


def known_revisions() -> set[str]:
    """Every migration this version has: a database at any other revision was migrated by a newer one."""
    return set(_revision_graph()[0])


@functools.cache
def _revision_graph() -> tuple[frozenset[str], frozenset[str]]:
    """(every revision, every revision some migration follows), from the migration files."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for down, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            if value:
                (parents if down else revisions).add(value)
    return frozenset(revisions), frozenset(parents)


def current_revisions(engine: Engine) -> set[str]:
    """What the database says it is at; empty for a new database."""
    with engine.connect() as conn:
        return _revisions(conn)


def alembic_config(engine: Engine) -> AlembicConfig:
    """Alembic's config for our migrations folder, bound to `engine` (imported only when needed)."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Upgrade to head. Idempotent; a schema that is current costs one query and no Alembic.

    Raises `SchemaConflict`, and changes nothing, when the database is at a revision this
    version does not know (a newer version migrated it) or needs a migration while daemons of
    the older version still run on it (a fresh heartbeat): they would go on reading rows of a
    schema they do not know. Stop them, then start this version again.
    """
    heads = head_revisions()
    if current_revisions(engine) == heads:
        return
    from alembic import command

    cfg = alembic_config(engine)
    with _migration_lock(engine) as conn:
        if _may_upgrade(conn, heads):  # another process may have migrated meanwhile
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


def enter_as_daemon(engine: Engine, heartbeat: Executable) -> None:
    """Write a starting daemon's first heartbeat and check the schema, in one step no migration
    can interleave: either a migration that follows sees the heartbeat and refuses, or this
    daemon sees the schema a migration left and refuses (`SchemaConflict`)."""
    heads = head_revisions()
    with _migration_lock(engine) as conn:
        current = _revisions(conn)
        if current != heads:
            raise SchemaConflict(
                f"database {_where(conn)} is at revision {', '.join(sorted(current)) or 'none'}, not"
                f" this mailticket's {', '.join(sorted(heads))}: another version migrated it since"
                " this process started; run the version that matches it"
            )
        conn.execute(heartbeat)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the migration lock: a PostgreSQL advisory lock
    (concurrent starts take turns), BEGIN IMMEDIATE on SQLite (the database's write lock)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            # A session-level lock outlives the migration's own transaction, which
            # rolls back whole on failure: PostgreSQL has transactional DDL.
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
            conn.commit()
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                conn.commit()
        return
    with engine.begin() as conn:
        # pysqlite runs DDL outside any transaction; an explicit BEGIN makes the whole
        # upgrade atomic, so a process killed mid-migration leaves the old schema intact.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


def _revisions(conn: Connection) -> set[str]:
    if not inspect(conn).has_table("alembic_version"):
        return set()
    return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}


def _where(conn: Connection) -> str:
    return conn.engine.url.render_as_string(hide_password=True)


def _may_upgrade(conn: Connection, heads: set[str]) -> bool:
    """Whether to run the migrations, under the migration lock: False when the schema is
    current by now. Raises `SchemaConflict` for a newer schema or older daemons still running."""
    current = _revisions(conn)
    if current == heads:
        return False
    if newer := current - known_revisions():
        raise SchemaConflict(
            f"database {_where(conn)} is at revision {', '.join(sorted(newer))}, which this mailticket"
            f" does not know (it knows up to {', '.join(sorted(heads))}): a newer version migrated"
            " it; run that version here too"
        )
    if inspect(conn).has_table("heartbeats") and (running := _running_daemons(conn)):
        raise SchemaConflict(
            f"database {_where(conn)} needs migration {', '.join(sorted(current))} ->"
            f" {', '.join(sorted(heads))}, but {len(running)} daemon(s) still run on it"
            f" ({'; '.join(running)}): stop every `mailticket run` of the database, then start"
            " this version again"
        )
    return True


def _running_daemons(conn: Connection) -> list[str]:
    """The daemons with a fresh heartbeat, as "host pid N, last beat Ns ago"; one that provably
    died on this host does not count."""
    from mailticket.storage.lease import holder_is_dead
    from mailticket.storage.tables import Heartbeat, utcnow

    beats: Table = Heartbeat.__table__  # type: ignore[attr-defined]
    now = utcnow()
    rows = conn.execute(
        select(beats.c.owner, beats.c.host, beats.c.pid, beats.c.beat_at)
        .where(beats.c.stopped_at.is_(None), beats.c.beat_at >= now - RUNNING_WITHIN)
        .order_by(beats.c.host, beats.c.pid)
    ).all()
    return [
        f"{host} pid {pid}, last beat {max(0, round((now - beat).total_seconds()))}s ago"
        for owner, host, pid, beat in rows
        if not holder_is_dead(owner)
    ]
