"""Whole-row INSERTs of many rows through the driver's ``executemany``.

For the hot path (the event applier, inside SQLite's write gate): the statement is compiled
once per table and dialect, and each value goes through its column's bind processor, which
is what SQLAlchemy does per row, without its per-statement work (cache key, compilation
lookup, parameter construction) that cost as much as the SQL itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Dialect, Table, insert
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
    # The rows of one call share values (a batch's "now"): each is processed once.
    processed: dict[tuple[int, Any], Any] = {}
    for row in rows:
        values = list(plan.values_of({**plan.defaults, **row}))
        for position, process in plan.processed:
            value = values[position]
            if value is None:
                continue
            key = (position, value)
            done = processed.get(key, processed)
            if done is processed:
                done = processed[key] = process(value)
            values[position] = done
        params.append(dict(zip(plan.columns, values, strict=True)) if plan.named else tuple(values))
    conn.exec_driver_sql(plan.sql, params)
