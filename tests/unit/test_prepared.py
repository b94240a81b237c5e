"""Prepared statements (storage/prepared.py) on SQLite and PostgreSQL, held to what Core does.

`Prepared` and `Inserter` skip Core's per-execution work but promise Core's results: the same
stored values, the same defaults, the same errors (IntegrityError, which the pipeline retries on;
DatabaseUnavailable, which pauses a source). Each test compares with Core or with that promise.
The `engine` fixture (tests/conftest.py) runs every test on a SQLite file and on a fresh
PostgreSQL database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Executable, LargeBinary, Table, Text, cast, func, insert, select
from sqlalchemy.exc import IntegrityError

from mailticket.errors import DatabaseUnavailable
from mailticket.storage import repository
from mailticket.storage.prepared import Prepared, inserter, run
from mailticket.storage.tables import (
    Attachment,
    Entry,
    Event,
    IntakeRecord,
    MessageRef,
    OutboxMessage,
    Participant,
    Ticket,
)
from mailticket.tickets import notices, store

TICKETS: Table = Ticket.__table__  # type: ignore[attr-defined]
EVENTS: Table = Event.__table__  # type: ignore[attr-defined]
OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
INTAKE: Table = IntakeRecord.__table__  # type: ignore[attr-defined]
REFS: Table = MessageRef.__table__  # type: ignore[attr-defined]
ENTRIES: Table = Entry.__table__  # type: ignore[attr-defined]
FILES: Table = Attachment.__table__  # type: ignore[attr-defined]
PARTICIPANTS: Table = Participant.__table__  # type: ignore[attr-defined]
INTAKE_ROW = {"dedup_key": "k", "raw_sha256": "f" * 64, "source": "test", "status": "stored", "reason": ""}

# Not UTC on purpose: the column type stores the instant in UTC and reads it back as UTC.
WHEN = datetime(2026, 11, 23, 10, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))


def new_id(conn: Connection, table: Table, values: dict[str, Any]) -> int:
    """The id of a row inserted by Core."""
    key = conn.execute(insert(table).values(values)).inserted_primary_key
    assert key is not None
    return int(key[0])


def new_ticket(conn: Connection, ref: str, created_at: datetime = WHEN) -> int:
    values = {"ref": ref, "subject": "Cannot log in", "department": "general",
              "requester": "carol@customer.example", "tags": [], "created_at": created_at}
    return inserter(TICKETS, conn.dialect).insert(conn, values)


def sample(table: Table, ticket_id: int, n: int) -> dict[str, Any]:
    """Row `n` of `table`, with every kind of value the schema stores (only `ref` varies with n)."""
    if table is TICKETS:
        return {"ref": f"RTRP-{n:04d}", "subject": "Zugang gesperrt ✓", "status": "pending",
                "priority": "high", "department": "billing", "assignee": None,
                "requester": "carol@customer.example", "requester_name": "Carol Ö", "sla": "standard",
                "tags": ["vip", "ümlaut"], "created_at": WHEN, "updated_at": WHEN + timedelta(seconds=1),
                "first_response_due": WHEN + timedelta(hours=8), "resolved_at": None, "language": "de"}
    if table is EVENTS:
        return {"ticket_id": ticket_id, "at": WHEN, "actor": "alice@example.com", "kind": "status",
                "data": {"from": "open", "n": 3, "ok": True, "none": None, "nested": {"x": [1, 2.5, "ß"]}}}
    return {"ticket_id": ticket_id, "kind": "ack", "to_addr": "carol@customer.example",
            "recipients": ["carol@customer.example", "dave@customer.example"],
            "context": None,  # Core stores JSON null here, not SQL NULL
            "automatic": False, "status": "queued", "attempts": 2, "next_attempt_at": WHEN,
            "claimed_until": None, "created_at": WHEN, "subject": "Re: x", "raw": b"\x00\xffraw"}


@pytest.mark.parametrize("table", [TICKETS, EVENTS, OUTBOX], ids=lambda t: t.name)
def test_rows_are_stored_and_read_back_as_core_stores_them(engine: Engine, table: Table) -> None:
    """Row 0 by Core, 1 by `insert`, 2-3 by `insert_many`: equal values read back (datetimes in
    UTC), and equal as the database holds them (each column cast to text)."""
    with engine.begin() as conn:
        ticket_id = new_ticket(conn, "FKFK-0000")
        writer = inserter(table, conn.dialect)
        first = new_id(conn, table, sample(table, ticket_id, 0))
        writer.insert(conn, sample(table, ticket_id, 1))
        writer.insert_many(conn, [sample(table, ticket_id, 2), sample(table, ticket_id, 3)])
        mine = table.c.id >= first
        rows = conn.execute(select(table).where(mine).order_by(table.c.id)).mappings().all()
        held = conn.execute(
            select(*(c if isinstance(c.type, LargeBinary) else cast(c, Text)  # SQLite: no text of \xff
                     for c in table.c if c.key not in ("id", "ref"))).where(mine)
        ).all()
    assert len(rows) == 4
    for n, row in enumerate(rows):
        expected = sample(table, ticket_id, n)
        assert {key: row[key] for key in expected} == expected
        assert all(v.utcoffset() == timedelta(0) for v in row.values() if isinstance(v, datetime))
    assert len(set(held)) == 1, held


@pytest.mark.parametrize(
    ("table", "given"),
    [
        (INTAKE, INTAKE_ROW),
        (OUTBOX, {"kind": "ack", "to_addr": "carol@customer.example", "recipients": []}),
    ],
    ids=["intake", "outbox"],
)
def test_left_out_columns_get_the_defaults_core_gives(
    engine: Engine, table: Table, given: dict[str, Any]
) -> None:
    """Scalar defaults (duplicates=0, automatic=True, status) and default_factory times (utcnow)."""
    unique = {"dedup_key": "core"} if table is INTAKE else {}
    before = datetime.now(UTC)
    with engine.begin() as conn:
        ids = new_id(conn, table, {**given, **unique}), inserter(table, conn.dialect).insert(conn, given)
        core, ours = (conn.execute(select(table).where(table.c.id == i)).mappings().one() for i in ids)
    after = datetime.now(UTC)
    checked: set[str] = set()
    for column in table.c:
        if column.default is None or column.key in given:
            continue
        checked.add(column.key)
        if column.default.is_callable:
            assert isinstance(ours[column.key], datetime), column.key
            assert before <= ours[column.key] <= after and ours[column.key].utcoffset() == timedelta(0)
        else:
            assert ours[column.key] == core[column.key] == column.default.arg, column.key  # type: ignore[attr-defined]
    expected = {"duplicates", "created_at"} if table is INTAKE else {
        "automatic", "status", "attempts", "next_attempt_at", "created_at"}
    assert checked == expected
    assert ours["ticket_id"] is None and core["ticket_id"] is None  # no default at all: NULL, as with Core


def test_insert_returns_the_new_rows_id(engine: Engine) -> None:
    """`insert_new` sets the ORM object's id from it (SQLite: lastrowid; PostgreSQL: RETURNING)."""
    with engine.begin() as conn:
        ids = [new_ticket(conn, f"IDID-{n:04d}") for n in range(3)]
        refs = [conn.execute(select(TICKETS.c.ref).where(TICKETS.c.id == i)).scalar_one() for i in ids]
    assert len(set(ids)) == 3 and ids == sorted(ids)
    assert refs == ["IDID-0000", "IDID-0001", "IDID-0002"]


def test_insert_once_keeps_the_first_row_on_a_unique_conflict(engine: Engine) -> None:
    """The first ticket to see a Message-ID keeps it; PostgreSQL's transaction is not aborted."""
    with engine.begin() as conn:
        first, second = new_ticket(conn, "ONCE-0001"), new_ticket(conn, "ONCE-0002")
        once = inserter(REFS, conn.dialect).insert_once
        once(conn, {"message_id": "m@x", "ticket_id": first, "direction": "in"})
        once(conn, {"message_id": "m@x", "ticket_id": second, "direction": "out"})
        once(conn, {"message_id": "n@x", "ticket_id": second, "direction": "out"})  # the transaction goes on
        columns = REFS.c.message_id, REFS.c.ticket_id, REFS.c.direction
        rows = conn.execute(select(*columns).order_by(REFS.c.id)).all()
    assert [tuple(row) for row in rows] == [("m@x", first, "in"), ("n@x", second, "out")]


@pytest.mark.parametrize("how", ["insert", "insert_many"])
def test_a_unique_violation_is_an_integrity_error_that_rolls_back(engine: Engine, how: str) -> None:
    """The pipeline retries a message on exactly IntegrityError (a concurrent writer won)."""
    with engine.begin() as conn:
        row = {"message_id": "m@x", "ticket_id": new_ticket(conn, "UNIQ-0001"), "direction": "in"}
        inserter(REFS, conn.dialect).insert(conn, row)
    with engine.connect() as conn:
        writer = inserter(REFS, conn.dialect)
        other = {**row, "message_id": "other@x"}
        new_ticket(conn, "UNIQ-0002")
        with pytest.raises(IntegrityError):
            if how == "insert":
                writer.insert(conn, row)
            else:
                writer.insert_many(conn, [other, row])
        conn.rollback()
        counts = [conn.execute(select(func.count()).select_from(t)).scalar_one() for t in (TICKETS, REFS)]
    assert counts == [1, 1]


def test_an_operational_error_becomes_database_unavailable(engine: Engine) -> None:
    """A database refusing writes pauses intake: SQLite on a query_only connection, PostgreSQL
    waiting past lock_timeout for a table another session locked."""
    row = {"kind": "k", "data": {}, "at": WHEN}
    with engine.connect() as holder, engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            holder.exec_driver_sql("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        writer = inserter(EVENTS, conn.dialect)
        for write in (writer.insert, writer.insert_once, lambda c, r: writer.insert_many(c, [r])):
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA query_only=ON")
            else:
                conn.exec_driver_sql("SET lock_timeout = '100ms'")  # undone by each rollback
            with pytest.raises(DatabaseUnavailable):
                write(conn, row)
            conn.rollback()


def test_prepared_refuses_what_it_cannot_run_as_core_would(engine: Engine) -> None:
    """An expanding IN needs Core to render the list; a DateTime result needs Core's result
    processor (UTC-aware values), which a prepared SELECT does not run."""
    with pytest.raises(ValueError, match="expanding"):
        Prepared(repository._TICKETS_OF_MESSAGE_IDS, engine.dialect)
    with pytest.raises(ValueError, match="created_at"):
        Prepared(select(TICKETS.c.id, TICKETS.c.created_at), engine.dialect)


def test_the_codes_selects_are_prepared_and_answer_as_core_does(engine: Engine) -> None:
    """Every module-level SELECT run through `run`, on rows that match, against Core's answer."""
    with engine.begin() as conn:
        ticket_id = new_ticket(conn, "SELX-0001", created_at=WHEN)
        new_ticket(conn, "SELX-0002", created_at=WHEN - timedelta(hours=2))
        entry_id = inserter(ENTRIES, conn.dialect).insert(
            conn, {"ticket_id": ticket_id, "kind": "customer", "subject": "", "body_text": "", "flags": []})
        inserter(FILES, conn.dialect).insert_many(conn, [
            {"entry_id": entry_id, "filename": name, "content_type": "text/plain", "size": 3,
             "sha256": "a" * 64, "content_id": None} for name in ("b.txt", "a.txt")])
        inserter(PARTICIPANTS, conn.dialect).insert_many(conn, [
            {"ticket_id": ticket_id, "email": email, "role": role}
            for email, role in (("carol@customer.example", "requester"), ("d@x", "cc"), ("e@x", "cc"))])
        inserter(INTAKE, conn.dialect).insert(
            conn, {**INTAKE_ROW, "dedup_key": "mid:a@x", "ticket_id": ticket_id, "entry_id": entry_id})
        since = WHEN - timedelta(hours=1)
        cases: list[tuple[Executable, dict[str, Any], int]] = [
            (store._SEEN, {"key": "mid:a@x"}, 1),
            (store._SEEN_COPY, {"key": "mid:a@x", "sha": "f" * 64}, 1),
            (store._CC_COUNT, {"ticket_id": ticket_id}, 1),
            (notices._FILES, {"entry_id": entry_id}, 2),
            (notices._OPENED_SINCE, {"requester": "carol@customer.example", "since": since}, 1),
            (repository._PARTICIPANTS, {"ticket_id": ticket_id}, 3),
        ]
        for statement, params, rows in cases:
            ours = [tuple(row) for row in run(conn, statement, params).all()]  # type: ignore[arg-type]
            assert ours == [tuple(row) for row in conn.execute(statement, params).all()], statement
            assert len(ours) == rows, statement
        # The counts count what they should: 2 CCs; 1 ticket since (a bound datetime, made UTC)
        assert run(conn, store._CC_COUNT, cases[2][1]).scalar_one() == 2
        assert run(conn, notices._OPENED_SINCE, cases[4][1]).scalar_one() == 1


def test_a_missing_parameter_is_a_key_error_not_null(engine: Engine) -> None:
    """A caller's typo must not quietly compare with NULL (and match nothing)."""
    with engine.connect() as conn:
        with pytest.raises(KeyError, match="ticket_id"):
            run(conn, store._CC_COUNT, {})
        with pytest.raises(KeyError, match="sha"):
            run(conn, store._SEEN_COPY, {"key": "mid:a@x"})


def test_an_unknown_column_is_a_value_error_naming_it(engine: Engine) -> None:
    """A misspelt column is named, on every kind of INSERT, before anything runs."""
    with engine.connect() as conn:
        writer = inserter(TICKETS, conn.dialect)
        row = {"ref": "BADC-0001", "subject": "s", "department": "general", "requester": "c@x", "tags": [],
               "colour": "red"}
        for write in (writer.insert, writer.insert_once, lambda c, r: writer.insert_many(c, [r])):
            with pytest.raises(ValueError, match="tickets has no column colour"):
                write(conn, row)
