"""``ehi-bridge stats``: counts over the configured database.

Written with SQLAlchemy Core and lightweight ``table()`` constructs rather than the ORM
models, so the command starts without loading ``sqlalchemy.orm`` and every model module
(a test checks these names against the models). Accepts a Core connection (the CLI) or an
ORM session (the demo).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, column, func, select, table

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

inbox_events = table(
    "inbox_events", column("delivery_count"), column("status"), column("event_type")
)
connections = table("connections", column("status"))
exports = table("exports", column("status"))
resources = table("resources", column("id"))
TABLES = (inbox_events, connections, exports, resources)


def _by(conn: Connection | Session, column: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in conn.execute(select(column, func.count()).group_by(column))}


def collect(conn: Connection | Session) -> dict[str, Any]:
    inbox = inbox_events.c
    return {
        "deliveries": int(
            conn.scalar(select(func.coalesce(func.sum(inbox.delivery_count), 0))) or 0
        ),
        "distinct_events": int(conn.scalar(select(func.count()).select_from(inbox_events)) or 0),
        "events_by_status": _by(conn, inbox.status),
        "events_by_type": _by(conn, inbox.event_type),
        "connections_by_status": _by(conn, connections.c.status),
        "exports_by_status": _by(conn, exports.c.status),
        "resources": int(conn.scalar(select(func.count()).select_from(resources)) or 0),
    }
