"""Inbox rows written straight to the database, as the receiver leaves them (``received``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.webhooks.models import InboxEvent
from tests.webhook_client import connection_success, envelope


def inbox_row(event: dict[str, Any]) -> dict[str, Any]:
    org = (event.get("data") or {}).get("org_connection_id")
    return {
        "event_id": event["id"],
        "webhook_id": event["id"],
        "event_type": event["type"],
        "api_mode": event["api_mode"],
        "body": orjson.dumps(event),
        "received_at": utcnow(),
        "last_received_at": utcnow(),
        "delivery_count": 1,
        "status": "received",
        "org_connection_id": org if isinstance(org, str) else None,
        "attempts": 0,
        "apply_count": 0,
        "replays": 0,
    }


def store(db: Database, events: list[dict[str, Any]]) -> None:
    with db.session() as session:
        session.execute(InboxEvent.__table__.insert(), [inbox_row(e) for e in events])


def store_new_connections(
    db: Database, prefix: str, count: int, date: datetime | None = None
) -> None:
    """``count`` ``patient.connection_success`` events, each of a connection of its own."""
    events = [connection_success(f"{prefix}-{n}") for n in range(count)]
    store(db, [envelope("patient.connection_success", data, date=date) for data in events])
