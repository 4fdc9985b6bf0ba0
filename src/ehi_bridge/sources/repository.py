"""Queries and writes of source grants and pending authorizations. All their SQL is here."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, or_, select
from sqlalchemy.orm import Session

from ehi_bridge.connections.models import Connection
from ehi_bridge.connections.state import ConnectionStatus
from ehi_bridge.exports.models import Export
from ehi_bridge.exports.state import ExportStatus
from ehi_bridge.sources.models import SourceAuthorization, SourceGrant

AUTHORIZATION_LIFETIME = timedelta(minutes=30)


def grant(session: Session, connection_id: str, *, for_update: bool = False) -> SourceGrant | None:
    """The grant; ``for_update`` locks its row (PostgreSQL ``SELECT … FOR UPDATE``; on
    SQLite the session's ``BEGIN IMMEDIATE`` already holds the database's write lock)."""
    return session.get(SourceGrant, connection_id, with_for_update=for_update or None)


def add_authorization(session: Session, authorization: SourceAuthorization) -> None:
    session.add(authorization)


def take_authorization(session: Session, state: str, now: datetime) -> SourceAuthorization | None:
    """The pending authorization for ``state`` (locked), or None if unknown or too old.
    Old ones are dropped on the way."""
    session.execute(
        delete(SourceAuthorization).where(
            SourceAuthorization.created_at < now - AUTHORIZATION_LIFETIME
        )
    )
    return session.get(SourceAuthorization, state, with_for_update=True)


def due_for_resync(session: Session, now: datetime, every: timedelta, limit: int) -> list[str]:
    """Authorized smart connections last synced ``every`` ago (or never) with no export
    in progress."""
    active = exists().where(
        Export.connection_id == Connection.id, Export.status.in_(ExportStatus.ACTIVE)
    )
    return list(
        session.scalars(
            select(Connection.id)
            .join(SourceGrant, SourceGrant.connection_id == Connection.id)
            .where(
                and_(
                    Connection.source == "smart",
                    Connection.status == ConnectionStatus.AUTHORIZED,
                    or_(
                        SourceGrant.last_synced_at.is_(None),
                        SourceGrant.last_synced_at <= now - every,
                    ),
                    ~active,
                )
            )
            .order_by(Connection.id)
            .limit(limit)
        )
    )
