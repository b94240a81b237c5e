"""Shared fixtures: real Dovecot, Postfix, SMTP sink and databases (see tests/servers.py for why)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailticket.storage.db import make_engine, migrate
from tests.factories import sqlite_at_head
from tests.servers import (
    Dovecot,
    Postfix,
    ServerStartError,
    SmtpSink,
    ensure_server_packages,
    needs_private_postgres,
    postgres_bin_dir,
    postgres_database,
)

# Server mark -> the fixtures that start that server (or need its binaries).
SERVER_FIXTURES = {
    "dovecot": {"dovecot", "dovecot_session"},
    "postfix": {"postfix"},
    "opendkim": set(),  # marked by hand (tests/integration/test_border_mta.py)
    "postgres": {"postgres_binaries"},
    "chromium": {"chromium"},
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the slow tests first, mark tests by the servers they start (`-m dovecot`, `-m "not
    postfix"` work), then make sure those servers' packages are installed: as root they are
    installed now, otherwise the run stops with one message naming them (a server's tests
    never skip)."""
    # Longest first: pytest-xdist hands the first quarter of the run out one test at a time in
    # turn, so they spread over the workers instead of queuing behind each other at the end.
    items.sort(key=_expected_seconds, reverse=True)
    needed: set[str] = set()
    initdb_needed = False
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for mark, names in SERVER_FIXTURES.items():
            if names & fixtures:
                item.add_marker(getattr(pytest.mark, mark))
        needed.update(m.name for m in item.iter_markers() if m.name in SERVER_FIXTURES)
        initdb_needed = initdb_needed or "postgres_binaries" in fixtures
    if "postgres" in needed and not (initdb_needed or needs_private_postgres()):
        needed.discard("postgres")  # a PostgreSQL answers: its server binaries may live elsewhere
    try:
        ensure_server_packages(sorted(needed))
    except ServerStartError as exc:
        raise pytest.UsageError(str(exc)) from exc


def _expected_seconds(item: pytest.Item) -> float:
    """`@pytest.mark.slow(seconds=N)` says how long a test takes here; plain `slow` is 10 s."""
    mark = item.get_closest_marker("slow")
    return 0.0 if mark is None else float(mark.kwargs.get("seconds", 10))


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A fresh private Dovecot per test (user `support`/`secret`); starts in ~0.1 s."""
    server = Dovecot()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def dovecot_session() -> Iterator[Dovecot]:
    """One Dovecot for the whole run; tests sharing it must use their own folders."""
    server = Dovecot()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_binaries() -> Path:
    """Directory of initdb/pg_ctl (installed by the collection hook above if missing)."""
    found = postgres_bin_dir()
    assert found is not None, "initdb not found"
    return found


@pytest.fixture
def postfix() -> Iterator[Postfix]:
    """A fresh private Postfix per test (smtpd on a free loopback port); see servers.Postfix."""
    with Postfix() as server:
        yield server


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A real SMTP server recording what it accepts; replies scriptable per test."""
    with SmtpSink() as sink:
        yield sink


DB_PARAMS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=DB_PARAMS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of a new database with the schema at head: a SQLite file, or a fresh
    PostgreSQL database, each a copy of one migrated once per test process (a migration costs
    0.2-1 s here; tests of the migrations themselves take `empty_db_url`).

    Each test has its own database and never sees another's rows; PostgreSQL being down makes
    these tests fail, never skip.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{sqlite_at_head(tmp_path / 'mailticket.db')}"
    else:
        with postgres_database(template=request.getfixturevalue("postgres_at_head")) as url:
            yield url


@pytest.fixture(params=DB_PARAMS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of an empty database (no schema), for the tests of the migrations."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailticket.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(scope="session")
def postgres_at_head() -> Iterator[str]:
    """The name of a PostgreSQL database migrated to head that `db_url` copies (CREATE DATABASE
    ... TEMPLATE); one per test process, dropped at its end."""
    with postgres_database("mailticket_head") as url:
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()  # a template must have no connections while it is copied
        yield url.rsplit("/", 1)[1]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on `db_url` with the schema at head."""
    found = make_engine(db_url)
    migrate(found)
    yield found
    found.dispose()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless browser that lays out the HTML notices (Debian package `chromium`)."""
    found = shutil.which("chromium")
    assert found is not None, "chromium is installed by the collection hook"
    return found
