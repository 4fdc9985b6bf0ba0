"""Queries behind the REST API lists and details (read-only, keyset pagination).

Counts, single resources and the NDJSON/Bundle streams come from ``records.repository``.
``list_resources`` stays here: it pages in the order of the resources' own index
``(connection_id, resource_type, id)``, so a page is an index range scan even for a
connection with a million resources and no type filter (ordering by ``id`` alone would
read and sort all of that connection's rows for every page).

Every list is ordered by a unique key and continued from the last key of the previous
page, so a deep page costs the same as the first one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, or_, select, tuple_
from sqlalchemy.orm import Session, defer

from ehi_bridge.connections.models import Connection
from ehi_bridge.exports.models import Export
from ehi_bridge.records.models import Resource
from ehi_bridge.webhooks import repository as inbox_repo
from ehi_bridge.webhooks.models import InboxEvent

TIMELINE_LIMIT = 500


class BadCursor(ValueError):
    """A cursor that this API did not issue (or for another list)."""


def encode_cursor(kind: str, key: Sequence[Any]) -> str:
    raw = orjson.dumps([kind, *key])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(kind: str, cursor: str, types: Sequence[type]) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError) as error:
        raise BadCursor("cursor is not valid") from error
    if not isinstance(value, list) or len(value) != len(types) + 1 or value[0] != kind:
        raise BadCursor("cursor is not valid for this list")
    key: list[Any] = []
    for item, expected in zip(value[1:], types, strict=True):
        if expected is datetime:
            if not isinstance(item, str):
                raise BadCursor("cursor is not valid")
            try:
                parsed = datetime.fromisoformat(item)
            except ValueError as error:
                raise BadCursor("cursor is not valid") from error
            if parsed.tzinfo is None:
                raise BadCursor("cursor is not valid")
            try:
                key.append(parsed.astimezone(UTC))
            except OverflowError as error:  # past either end of time in UTC
                raise BadCursor("cursor is not valid") from error
        elif expected is int:
            if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item < 2**63:
                raise BadCursor("cursor is not valid")
            key.append(item)
        else:
            if not isinstance(item, str) or "\x00" in item or len(item) > 255:
                raise BadCursor("cursor is not valid")
            key.append(item)
    return key


# --- connections ----------------------------------------------------------------------------


def list_connections(
    session: Session,
    *,
    external_id: str | None,
    status: str | None,
    platform: str | None,
    mode: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
    source: str | None = None,
) -> list[Connection]:
    """Newest first: ``(created_at, id)`` descending. Returns up to ``limit + 1`` rows."""
    query = select(Connection)
    if external_id is not None:
        query = query.where(Connection.external_id == external_id)
    if status is not None:
        query = query.where(Connection.status == status)
    if platform is not None:
        query = query.where(Connection.platform_type == platform)
    if mode is not None:
        query = query.where(Connection.api_mode == mode)
    if source is not None:
        query = query.where(Connection.source == source)
    if after is not None:
        created, conn_id = after
        query = query.where(
            Connection.created_at <= created,
            or_(
                Connection.created_at < created,
                and_(Connection.created_at == created, Connection.id < conn_id),
            ),
        )
    query = query.order_by(Connection.created_at.desc(), Connection.id.desc()).limit(limit + 1)
    return list(session.scalars(query))


def connections_for_user(session: Session, external_id: str) -> list[Connection]:
    return list(
        session.scalars(
            select(Connection)
            .where(Connection.external_id == external_id)
            .order_by(Connection.created_at.desc(), Connection.id.desc())
        )
    )


def find_connection(session: Session, id_or_org_connection_id: str) -> Connection | None:
    found = session.get(Connection, id_or_org_connection_id)
    if found is not None:
        return found
    return session.scalars(
        select(Connection).where(Connection.org_connection_id == id_or_org_connection_id)
    ).one_or_none()


def connection_ids_for_user(session: Session, external_id: str) -> list[str]:
    return list(
        session.scalars(
            select(Connection.id)
            .where(Connection.external_id == external_id)
            .order_by(Connection.id)
        )
    )


# --- events ---------------------------------------------------------------------------------


def timeline(session: Session, org_connection_id: str) -> list[InboxEvent]:
    query = select(InboxEvent).options(defer(InboxEvent.body), defer(InboxEvent.last_error))
    return inbox_repo.newest_of_org_connection(session, query, org_connection_id, TIMELINE_LIMIT)


def list_events(
    session: Session,
    *,
    event_type: str | None,
    status: str | None,
    mode: str | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[InboxEvent]:
    """Newest first (id descending), without bodies."""
    query = select(InboxEvent).options(defer(InboxEvent.body), defer(InboxEvent.last_error))
    if event_type is not None:
        query = query.where(InboxEvent.event_type == event_type)
    if status is not None:
        query = query.where(InboxEvent.status == status)
    if mode is not None:
        query = query.where(InboxEvent.api_mode == mode)
    if since is not None:
        query = query.where(InboxEvent.received_at >= since)
    if until is not None:
        query = query.where(InboxEvent.received_at < until)
    if before_id is not None:
        query = query.where(InboxEvent.id < before_id)
    return list(session.scalars(query.order_by(InboxEvent.id.desc()).limit(limit + 1)))


def get_event(session: Session, event_id: int) -> InboxEvent | None:
    return session.get(InboxEvent, event_id)


def event_ids_with_status(session: Session, status: str) -> list[int]:
    return list(
        session.scalars(
            select(InboxEvent.id).where(InboxEvent.status == status).order_by(InboxEvent.id)
        )
    )


# --- exports --------------------------------------------------------------------------------


def list_exports(
    session: Session,
    *,
    status: str | None,
    connection_id: str | None,
    before_id: int | None,
    limit: int,
) -> list[Export]:
    query = select(Export).options(
        defer(Export.report), defer(Export.stats_by_type), defer(Export.ingested_by_type)
    )
    if status is not None:
        query = query.where(Export.status == status)
    if connection_id is not None:
        query = query.where(Export.connection_id == connection_id)
    if before_id is not None:
        query = query.where(Export.id < before_id)
    return list(session.scalars(query.order_by(Export.id.desc()).limit(limit + 1)))


def exports_for(session: Session, connection_ids: Sequence[str]) -> list[Export]:
    if not connection_ids:
        return []
    return list(
        session.scalars(
            select(Export)
            .options(
                defer(Export.report), defer(Export.stats_by_type), defer(Export.ingested_by_type)
            )
            .where(Export.connection_id.in_(connection_ids))
            .order_by(Export.id.desc())
        )
    )


def get_export(session: Session, export_id: int) -> Export | None:
    return session.get(Export, export_id)


# --- resources ------------------------------------------------------------------------------


def list_resources(
    session: Session,
    *,
    connection_ids: Sequence[str],
    resource_type: str | None,
    after: tuple[str, str, int] | None,
    limit: int,
) -> list[Resource]:
    """Ordered by ``(connection_id, resource_type, id)``: the resources' own index."""
    if not connection_ids:
        return []
    query = select(Resource)
    if len(connection_ids) == 1:
        query = query.where(Resource.connection_id == connection_ids[0])
    else:
        query = query.where(Resource.connection_id.in_(connection_ids))
    if resource_type is not None:
        query = query.where(Resource.resource_type == resource_type)
    if after is not None:
        key = tuple_(Resource.connection_id, Resource.resource_type, Resource.id)
        query = query.where(key > tuple_(*after))  # type: ignore[arg-type]
    query = query.order_by(Resource.connection_id, Resource.resource_type, Resource.id)
    return list(session.scalars(query.limit(limit + 1)))
