"""Queries and writes of connections. All SQL for this table lives here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.orm import Session

from ehi_bridge.connections.models import Connection
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.bulk import ListStatement, insert_rows
from ehi_bridge.db.ids import time_ordered_id
from ehi_bridge.db.plans import prefer_index_plans


def new_connection_id() -> str:
    return time_ordered_id()


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


CONNECTIONS = cast(Table, Connection.__table__)

# What the event applier reads and may change of a connection.
_LOCKED_COLUMNS = (
    "id",
    "org_connection_id",
    "external_id",
    "status",
    "status_changed_at",
    "platform_type",
    "endpoint_id",
    "brand_id",
    "portal_id",
    "org_id",
    "request_id",
    "external_state",
    "scope",
    "consent_expires_at",
    "updated_at",
    "authorized_at",
    "revoked_at",
)


@dataclass(slots=True)
class LockedConnection:
    """A connection row locked by the applier's transaction, as plain attributes; the
    changes are written back by ``save_locked``. Not an ORM object: loading, tracking and
    flushing those cost several times the CPU per event, all of it spent inside SQLite's
    write lock while the webhook receiver waits for it."""

    id: str
    org_connection_id: str | None
    external_id: str | None
    status: str
    status_changed_at: datetime | None
    platform_type: str | None
    endpoint_id: str | None
    brand_id: str | None
    portal_id: str | None
    org_id: str | None
    request_id: str | None
    external_state: str | None
    scope: str | None
    consent_expires_at: str | None
    updated_at: datetime
    authorized_at: datetime | None
    revoked_at: datetime | None
    loaded: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    # A new connection: the columns of its row besides these, to insert it with.
    insert: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def to_insert(cls, row: dict[str, Any]) -> LockedConnection:
        values: dict[str, Any] = {name: row.get(name) for name in _LOCKED_COLUMNS}
        return cls(**values, insert=row)

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _LOCKED_COLUMNS}

    def changes(self) -> dict[str, Any]:
        return {
            name: value
            for name, before in zip(_LOCKED_COLUMNS, self.loaded, strict=True)
            if (value := getattr(self, name)) != before
        }


# Built once: the applier runs them for every batch, inside SQLite's write gate.
_LOCK = ListStatement(
    select(*(CONNECTIONS.c[name] for name in _LOCKED_COLUMNS))
    .where(CONNECTIONS.c.org_connection_id.in_(bindparam("org_ids", expanding=True)))
    .order_by(CONNECTIONS.c.org_connection_id)
    .with_for_update(),
    "org_ids",
)
# One lock per key, taken in the order of the (sorted) array: unnest emits it in order.
_ADVISORY_LOCKS = text(
    "SELECT pg_advisory_xact_lock(hashtextextended('connection:' || k, 0)) "
    "FROM unnest(CAST(:keys AS text[])) AS k"
)


def lock_for_events(
    session: Session, org_connection_ids: dict[str, str]
) -> dict[str, LockedConnection]:
    """The connections a batch of events touches (org_connection_id → api mode), locked;
    those not found are returned as new (``insert``), written once, complete, by
    ``save_locked``: inserting them ``pending`` and updating them after wrote every index
    of every new row twice. The caller saves before it writes anything that refers to one
    (an export).

    No other applier can create one of them meanwhile. On SQLite the transaction
    (``BEGIN IMMEDIATE``) excludes every other writer. On PostgreSQL appliers first take a
    transaction-scoped advisory lock per org_connection_id, in one sorted order, then the
    rows' locks in that order: two appliers sharing a backlog queue behind each other
    instead of deadlocking, and the second sees the first's new rows. (Another writer that
    creates the same connection meanwhile makes the batch's INSERT fail: the batch is redone
    one event at a time and that event retried, by then finding the row.)
    """
    if not org_connection_ids:
        return {}
    now = utcnow()
    ordered = sorted(org_connection_ids)
    prefer_index_plans(session)
    if session.get_bind().dialect.name != "sqlite":
        session.execute(_ADVISORY_LOCKS, {"keys": ordered})
    locked = {}
    for row in _LOCK.execute(session.connection(), ordered, {}):
        connection = LockedConnection(*row)
        connection.loaded = tuple(row)
        if connection.org_connection_id:
            locked[connection.org_connection_id] = connection
    for org_id in ordered:
        if org_id not in locked:
            locked[org_id] = LockedConnection.to_insert(
                {
                    "id": new_connection_id(),
                    "org_connection_id": org_id,
                    "api_mode": org_connection_ids[org_id],
                    "source": "fasten",
                    "status": "pending",
                    "created_at": now,
                    "updated_at": now,
                }
            )
    return locked


def save_locked(session: Session, connections: Iterable[LockedConnection]) -> None:
    """Write back what changed: new rows in one INSERT, then one executemany per set of
    changed columns."""
    inserts: list[dict[str, Any]] = []
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for connection in connections:
        current = connection.values()
        if connection.insert is not None:
            inserts.append({**connection.insert, **current})
            connection.insert = None
        else:
            changes = connection.changes()
            if not changes:
                continue
            params = {"connection_id": connection.id}
            params.update((f"new_{name}", value) for name, value in changes.items())
            groups.setdefault(tuple(changes), []).append(params)
        connection.loaded = tuple(current.values())
    insert_rows(session.connection(), CONNECTIONS, inserts)
    for names, params_list in groups.items():
        statement = (
            update(CONNECTIONS)
            .where(CONNECTIONS.c.id == bindparam("connection_id"))
            .values({name: bindparam(f"new_{name}") for name in names})
        )
        session.execute(statement, params_list)
