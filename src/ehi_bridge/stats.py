"""``ehi-bridge stats``: counts over the configured database.

Plain SQL that SQLite and PostgreSQL both run, handed to whatever executes it: the CLI opens
the driver itself (``sqlite3`` or psycopg, no SQLAlchemy: a third of its start-up), the demo
passes its session. A test runs every query against both backends and the ORM's counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

Execute = Callable[[str], Sequence[Sequence[Any]]]

SCALARS = {
    "deliveries": "SELECT coalesce(sum(delivery_count), 0) FROM inbox_events",
    "distinct_events": "SELECT count(*) FROM inbox_events",
    "resources": "SELECT count(*) FROM resources",
}
GROUPS = {
    "events_by_status": ("inbox_events", "status"),
    "events_by_type": ("inbox_events", "event_type"),
    "connections_by_status": ("connections", "status"),
    "exports_by_status": ("exports", "status"),
}


def collect(execute: Execute) -> dict[str, Any]:
    data: dict[str, Any] = {name: int(execute(sql)[0][0] or 0) for name, sql in SCALARS.items()}
    for name, (table, column) in GROUPS.items():
        rows = execute(f"SELECT {column}, count(*) FROM {table} GROUP BY {column}")
        data[name] = {str(key): int(count) for key, count in rows}
    return dict(sorted(data.items()))


def driver_target(url: str) -> tuple[str, str]:
    """``("sqlite", file)`` or ``("postgresql", libpq URI)`` for a database URL, parsed
    without SQLAlchemy; ValueError for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "sqlite":
        path = unquote(url.split(":///", 1)[1].split("?", 1)[0]) if ":///" in url else ""
        if not path or path == ":memory:":
            raise ValueError("stats needs an SQLite file")
        return "sqlite", path
    if scheme in ("postgresql", "postgres"):
        return "postgresql", parts._replace(scheme="postgresql").geturl()
    raise ValueError(f"unsupported database {scheme!r}")
