"""Shared fixtures: real Dovecot, SMTP sink and databases (see tests/servers.py for why)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailticket.storage.db import make_engine, migrate
from tests.servers import Dovecot, SmtpSink, postgres_database

DOVECOT_FIXTURES = frozenset({"dovecot", "dovecot_session"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use a Dovecot fixture, so `-m dovecot` / `-m "not dovecot"` work."""
    for item in items:
        if DOVECOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.dovecot)


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
def smtp_sink() -> Iterator[SmtpSink]:
    """A real SMTP server recording what it accepts; replies scriptable per test."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of an empty database: a SQLite file, or a fresh PostgreSQL database.

    A fresh PostgreSQL database per test costs ~75 ms (create + drop) and keeps tests fully
    isolated; PostgreSQL being down makes these tests fail, never skip.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailticket.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on `db_url` with the schema at head."""
    found = make_engine(db_url)
    migrate(found)
    yield found
    found.dispose()
