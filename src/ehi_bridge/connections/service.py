"""Connections recorded from outside the webhook path (the patient connect page)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ehi_bridge.connections import repository
from ehi_bridge.connections.models import Connection
from ehi_bridge.connections.state import ConnectionStatus
from ehi_bridge.db.base import utcnow

WIDGET_FIELDS = ("endpoint_id", "brand_id", "portal_id", "platform_type")


def record_widget_complete(session: Session, data: dict[str, Any], api_mode: str) -> Connection:
    """Link an ``org_connection_id`` to the ``external_id`` the connect link named.

    The browser is not trusted with authorization: a new connection starts ``pending`` and
    only Fasten's signed ``patient.connection_success`` webhook authorizes it (and requests
    the export). A connection already owned by another ``external_id`` is refused.
    """
    org_connection_id = data.get("org_connection_id")
    if not isinstance(org_connection_id, str) or not org_connection_id:
        raise ValueError("org_connection_id is required")
    external_id = data.get("external_id")
    connection = repository.by_org_connection_id(session, org_connection_id)
    if connection is None:
        connection = repository.create(
            session,
            org_connection_id,
            api_mode=api_mode,
            status=ConnectionStatus.PENDING,
            external_id=external_id,
        )
    elif external_id and connection.external_id and connection.external_id != external_id:
        raise ValueError("this connection belongs to another user")
    elif connection.api_mode != api_mode:
        raise ValueError(f"this connection is a {connection.api_mode} mode connection")
    if external_id and not connection.external_id:
        connection.external_id = external_id
    for name in WIDGET_FIELDS:
        value = data.get(name)
        if isinstance(value, str) and value and not getattr(connection, name):
            setattr(connection, name, value)
    connection.updated_at = utcnow()
    session.flush()
    return connection
