"""Statements of the hot path run closer to the driver: whole-row INSERTs of many rows
through one ``executemany``, and statements over a list of values (``ListStatement``).

For the hot path (the event applier, inside SQLite's write gate). ``insert_rows``: the
statement is compiled once per table and dialect, and each value goes through its column's
bind processor, which is what SQLAlchemy does per row, without its per-statement work (cache
key, compilation lookup, parameter construction) that cost as much as the SQL itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Dialect, Select, Table, Update, insert
from sqlalchemy.sql.schema import ScalarElementColumnDefault


@dataclass(frozen=True, slots=True)
class _CompiledInsert:
    sql: str
    columns: tuple[str, ...]  # in the statement's parameter order
    defaults: dict[str, Any]  # every column: its scalar Python default, or None
    values_of: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # a full row → its values
    processed: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor)
    named: bool  # the driver takes a mapping per row (pyformat), not a sequence


_compiled: dict[tuple[str, str], _CompiledInsert] = {}


def _compile(table: Table, dialect: Dialect) -> _CompiledInsert:
    key = (table.name, dialect.name)
    found = _compiled.get(key)
    if found is not None:
        return found
    names = tuple(column.name for column in table.columns)
    compiled = insert(table).values({name: None for name in names}).compile(dialect=dialect)
    order = tuple(compiled.positiontup) if compiled.positiontup else names
    columns = [table.c[name] for name in order]
    processors = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
    made = _CompiledInsert(
        sql=str(compiled),
        columns=order,
        defaults={
            c.name: c.default.arg if isinstance(c.default, ScalarElementColumnDefault) else None
            for c in columns
        },
        values_of=itemgetter(*order),
        processed=tuple((i, p) for i, p in enumerate(processors) if p is not None),
        named=not compiled.positiontup,
    )
    _compiled[key] = made
    return made


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT ``rows`` (column name → value; a missing column takes its scalar default or
    NULL) in one ``executemany``."""
    if not rows:
        return
    plan = _compile(table, conn.dialect)
    params: list[Any] = []
    # The rows of one call share values (a batch's "now"): a column's value equal to the
    # previous row's is not processed again. Comparing works for any value, hashable or not.
    previous: dict[int, tuple[Any, Any]] = {}  # position → (value, processed value)
    for row in rows:
        values = list(plan.values_of({**plan.defaults, **row}))
        for position, process in plan.processed:
            value = values[position]
            if value is None:
                continue
            last = previous.get(position)
            if last is None or last[0] != value:
                last = previous[position] = (value, process(value))
            values[position] = last[1]
        params.append(dict(zip(plan.columns, values, strict=True)) if plan.named else tuple(values))
    conn.exec_driver_sql(plan.sql, params)


@dataclass(frozen=True, slots=True)
class _ListPlan:
    sql: str  # with the list's placeholder still in it
    order: tuple[str, ...]  # parameter names in the statement's order
    fixed: dict[str, Any]  # the statement's own values (literals SQLAlchemy binds)
    processors: dict[str, Callable[[Any], Any]]
    # A SELECT's columns that are converted on the way out: (position, result processor).
    converted: tuple[tuple[int, Callable[[Any], Any]], ...]


class ListStatement:
    """A Core statement with one expanding list parameter (``IN``), run on SQLite through
    the driver's cursor.

    For the applier's statements inside SQLite's write gate: SQLAlchemy expands the list and
    builds an execution context on every call, which cost more than SQLite's own work (0.49
    against 0.19 ms for 145 ids). Here the statement is compiled once; each call only puts
    as many placeholders as values where the list goes. Elsewhere (PostgreSQL) it is
    executed by SQLAlchemy as it is.
    """

    def __init__(self, statement: Select[Any] | Update, list_name: str) -> None:
        self.statement = statement
        self._list_name = list_name
        self._plan: _ListPlan | None = None  # SQLite's: the only dialect run this way

    def _sqlite_plan(self, dialect: Dialect) -> _ListPlan:
        if self._plan is None:
            compiled = self.statement.compile(dialect=dialect)
            order = tuple(compiled.positiontup or ())
            binds = {name: compiled.binds[name] for name in order}
            self._plan = _ListPlan(
                sql=str(compiled),
                order=order,
                fixed={name: bind.value for name, bind in binds.items() if not bind.required},
                processors={
                    name: processor
                    for name, bind in binds.items()
                    if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect))
                },
                converted=self._result_processors(dialect),
            )
        return self._plan

    def _result_processors(self, dialect: Dialect) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        if not isinstance(self.statement, Select):
            return ()
        processors = (
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in self.statement.selected_columns
        )
        return tuple((i, p) for i, p in enumerate(processors) if p is not None)

    def execute(
        self, conn: Connection, values: Sequence[Any], params: Mapping[str, Any]
    ) -> list[Any]:
        """The rows the statement returns, as tuples of its columns' Python values (none for
        an UPDATE)."""
        if conn.dialect.name != "sqlite":
            result = conn.execute(self.statement, {self._list_name: list(values), **params})
            return list(result.tuples()) if result.returns_rows else []
        plan = self._sqlite_plan(conn.dialect)
        flat: list[Any] = []
        for name in plan.order:
            if name == self._list_name:
                flat.extend(values)
                continue
            value = plan.fixed[name] if name in plan.fixed else params[name]
            process = plan.processors.get(name)
            flat.append(process(value) if process is not None and value is not None else value)
        placeholders = ", ".join("?" * len(values))
        sql = plan.sql.replace(f"__[POSTCOMPILE_{self._list_name}]", placeholders)
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None  # the session's transaction holds it
        rows: list[Any] = dbapi_connection.execute(sql, flat).fetchall()
        if not plan.converted:
            return rows
        converted = []
        for row in rows:
            columns = list(row)
            for position, process in plan.converted:
                columns[position] = process(columns[position])
            converted.append(tuple(columns))
        return converted
