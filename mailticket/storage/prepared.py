"""The intake path's statements, compiled once per dialect and run through `exec_driver_sql`.

Storing a message runs about ten small statements. For each, Core's `Connection.execute` of a
compiled construct (cache key, compiled-parameter set-up, type processing, result set-up) cost
more than the database's own work: py-spy on `benchmarks/ingest.py` put `Connection.execute`
at 52% of the storing transaction, of which the DB-API call itself was 14% (docs/benchmarks.md).
A `Prepared` statement keeps the SQL string, the parameters' order and each parameter's bind
processor (the column type's own, for the dialect: datetimes, JSON and booleans are stored
exactly as Core stores them), and runs on the connection's `exec_driver_sql`: the engine's
events and error mapping (`DatabaseUnavailable`, `IntegrityError`) stay as they are.

Only plain statements qualify: bound parameters by name, no expanding IN lists, and (for a
SELECT) result columns the driver returns as Python wants them (ids, text, counts), since no
result processing runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BindParameter,
    ClauseElement,
    Column,
    Connection,
    CursorResult,
    Table,
    bindparam,
    insert,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from mailticket.storage.db import upsert

Processor = Callable[[Any], Any] | None
_NO_VALUE = object()


class Prepared:
    """One statement for one dialect: its SQL, its parameters in order, their processors."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        binds = compiled.binds
        if any(bind.expanding for bind in binds.values()):
            raise ValueError("a prepared statement cannot have expanding parameters")
        for column in getattr(statement, "selected_columns", ()):
            if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
                raise ValueError(f"a prepared SELECT returns values as the driver gives them: {column}")
        self.sql = compiled.string
        self.positional = dialect.positional
        names = list(compiled.positiontup or ()) if dialect.positional else list(binds)
        self.params: list[tuple[str, Any, Processor]] = [
            (
                name,
                _NO_VALUE if binds[name].required else binds[name].effective_value,
                binds[name].type.dialect_impl(dialect).bind_processor(dialect),
            )
            for name in names
        ]

    def _row(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        out = []
        for name, fixed, process in self.params:
            value = values[name] if fixed is _NO_VALUE else values.get(name, fixed)
            # None too, as Core does: JSON stores None as JSON null, not SQL NULL.
            out.append(process(value) if process is not None else value)
        if self.positional:
            return tuple(out)
        return {name: value for (name, _, _), value in zip(self.params, out, strict=True)}

    def execute(self, conn: Connection, values: Mapping[str, Any] | None = None) -> CursorResult[Any]:
        return conn.exec_driver_sql(self.sql, self._row(values or {}))

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        conn.exec_driver_sql(self.sql, [self._row(row) for row in rows])


@functools.lru_cache(maxsize=1024)  # per engine's dialect: bounded, for test runs of many engines
def prepared(statement: ClauseElement, dialect: Dialect) -> Prepared:
    """`statement` compiled for `dialect`, once (statements are module-level constants)."""
    return Prepared(statement, dialect)


class Inserter:
    """INSERTs into one table for one dialect, by the set of columns a caller gives.

    Columns the caller leaves out get their Python-side defaults (scalars and the models'
    `default_factory`) here, as Core would; one without any is left out of the statement, so
    the database's own default applies.
    """

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.table = table
        self.dialect = dialect
        self.defaults: dict[str, Callable[[], Any]] = {}
        for column in table.columns:
            if column.primary_key or column.default is None:
                continue
            self.defaults[column.key] = _default_of(column)
        self._statements: dict[tuple[frozenset[str], str], Prepared] = {}

    def _complete(self, row: Mapping[str, Any]) -> dict[str, Any]:
        missing = self.defaults.keys() - row.keys()
        return {**row, **{key: self.defaults[key]() for key in missing}} if missing else dict(row)

    def _statement(self, keys: frozenset[str], kind: str) -> Prepared:
        """`kind`: "plain", "returning" (the new key) or "once" (nothing on a unique conflict)."""
        found = self._statements.get((keys, kind))
        if found is None:
            unknown = keys - set(self.table.columns.keys())
            if unknown:
                raise ValueError(f"{self.table.name} has no column {', '.join(sorted(unknown))}")
            values: dict[str, BindParameter[Any]] = {key: bindparam(key) for key in sorted(keys)}
            statement: ClauseElement
            if kind == "once":
                statement = upsert(self.dialect.name, self.table).values(values).on_conflict_do_nothing()
            elif kind == "returning" and self.dialect.name != "sqlite":  # SQLite: lastrowid
                statement = insert(self.table).values(values).returning(*self.table.primary_key.columns)
            else:
                statement = insert(self.table).values(values)
            found = self._statements[(keys, kind)] = Prepared(statement, self.dialect)
        return found

    def insert(self, conn: Connection, row: Mapping[str, Any]) -> int:
        """INSERT one row; its new integer primary key."""
        values = self._complete(row)
        result = self._statement(frozenset(values), "returning").execute(conn, values)
        key = result.lastrowid if self.dialect.name == "sqlite" else result.scalar_one()
        assert isinstance(key, int), "a single-row INSERT reports its key"
        return key

    def insert_many(self, conn: Connection, rows: Iterable[Mapping[str, Any]], *, once: bool = False) -> None:
        """INSERT rows (one executemany per column set); `once`: each unless it would break a
        unique constraint (see `insert_once`)."""
        by_keys: dict[frozenset[str], list[dict[str, Any]]] = {}
        for row in rows:
            values = self._complete(row)
            by_keys.setdefault(frozenset(values), []).append(values)
        for keys, values_list in by_keys.items():
            self._statement(keys, "once" if once else "plain").execute_many(conn, values_list)

    def insert_once(self, conn: Connection, row: Mapping[str, Any]) -> None:
        """INSERT one row unless it would break a unique constraint (the existing row stays)."""
        values = self._complete(row)
        self._statement(frozenset(values), "once").execute(conn, values)


def _default_of(column: Column[Any]) -> Callable[[], Any]:
    default = column.default
    assert default is not None
    if default.is_scalar:
        value = default.arg  # type: ignore[attr-defined]
        return lambda: value
    if default.is_callable:
        make = default.arg  # type: ignore[attr-defined]  # Core wraps a no-argument factory to take a context
        return lambda: make(None)
    raise ValueError(f"column {column} has a default a prepared INSERT cannot compute")


@functools.lru_cache(maxsize=1024)
def inserter(table: Table, dialect: Dialect) -> Inserter:
    return Inserter(table, dialect)


def run(
    conn: Connection, statement: ClauseElement, values: Mapping[str, Any] | None = None
) -> CursorResult[Any]:
    """Execute a module-level `statement` as a prepared one on `conn`."""
    return prepared(statement, conn.dialect).execute(conn, values)
