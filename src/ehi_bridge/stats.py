"""``ehi-bridge stats``: counts over the configured database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ehi_bridge.connections.models import Connection
from ehi_bridge.exports.models import Export
from ehi_bridge.records.models import Resource
from ehi_bridge.webhooks.models import InboxEvent


def _by(session: Session, column: Any) -> dict[str, int]:
    return {
        str(k): int(v) for k, v in session.execute(select(column, func.count()).group_by(column))
    }


def collect(session: Session) -> dict[str, Any]:
    return {
        "deliveries": int(
            session.scalar(select(func.coalesce(func.sum(InboxEvent.delivery_count), 0))) or 0
        ),
        "distinct_events": int(session.scalar(select(func.count()).select_from(InboxEvent)) or 0),
        "events_by_status": _by(session, InboxEvent.status),
        "events_by_type": _by(session, InboxEvent.event_type),
        "connections_by_status": _by(session, Connection.status),
        "exports_by_status": _by(session, Export.status),
        "resources": int(session.scalar(select(func.count()).select_from(Resource)) or 0),
    }
