"""Queries and writes of connections. All SQL for this table lives here."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ehi_bridge.connections.models import Connection
from ehi_bridge.db.base import utcnow


def new_connection_id() -> str:
    return uuid.uuid4().hex


def get(session: Session, connection_id: str) -> Connection | None:
    return session.get(Connection, connection_id)


def by_org_connection_id(session: Session, org_connection_id: str) -> Connection | None:
    return session.scalars(
        select(Connection).where(Connection.org_connection_id == org_connection_id)
    ).one_or_none()


def find(session: Session, id_or_org_connection_id: str) -> Connection | None:
    """Look a connection up by our id or by Fasten's org_connection_id."""
    return get(session, id_or_org_connection_id) or by_org_connection_id(
        session, id_or_org_connection_id
    )


def ensure_manual_connection(
    session: Session, id_or_org_connection_id: str, external_id: str | None = None
) -> Connection:
    """The connection with this id, or a new ``manual`` one (a file a patient uploaded)."""
    existing = find(session, id_or_org_connection_id)
    if existing is not None:
        return existing
    return create(
        session,
        id_or_org_connection_id,
        api_mode="manual",
        source="manual",
        status="manual",
        external_id=external_id,
    )


def create(
    session: Session,
    org_connection_id: str,
    *,
    api_mode: str,
    status: str,
    source: str = "fasten",
    external_id: str | None = None,
) -> Connection:
    now = utcnow()
    connection = Connection(
        id=new_connection_id(),
        org_connection_id=org_connection_id,
        external_id=external_id,
        api_mode=api_mode,
        source=source,
        status=status,
        status_changed_at=now if status == "manual" else None,
        created_at=now,
        updated_at=now,
    )
    session.add(connection)
    session.flush()
    return connection


def create_smart(
    session: Session, platform: str, fhir_base_url: str, external_id: str | None = None
) -> Connection:
    """A connection made by a SMART authorization of ours (``sources/``), authorized."""
    now = utcnow()
    connection = Connection(
        id=new_connection_id(),
        org_connection_id=None,
        external_id=external_id,
        api_mode="smart",
        source="smart",
        status="authorized",
        status_changed_at=now,
        platform_type=platform,
        fhir_base_url=fhir_base_url,
        created_at=now,
        updated_at=now,
        authorized_at=now,
    )
    session.add(connection)
    session.flush()
    return connection


def lock_for_events(session: Session, org_connection_ids: dict[str, str]) -> dict[str, Connection]:
    """The connections a batch of events touches (org_connection_id → api mode), created
    ``pending`` where new, locked in one sorted order so two appliers sharing a backlog on
    PostgreSQL queue behind each other instead of deadlocking."""
    if not org_connection_ids:
        return {}
    now = utcnow()
    ordered = sorted(org_connection_ids)
    rows = [
        {
            "id": new_connection_id(),
            "org_connection_id": org_id,
            "api_mode": org_connection_ids[org_id],
            "source": "fasten",
            "status": "pending",
            "created_at": now,
            "updated_at": now,
        }
        for org_id in ordered
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(Connection).on_conflict_do_nothing(index_elements=["org_connection_id"]), rows
    )
    found = session.scalars(
        select(Connection)
        .where(Connection.org_connection_id.in_(ordered))
        .order_by(Connection.org_connection_id)
        .with_for_update()
    ).all()
    return {c.org_connection_id: c for c in found if c.org_connection_id}
