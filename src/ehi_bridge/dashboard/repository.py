"""Every query of the dashboard and the connect page.

Written for 100k connections and 10M resources: each query walks an index (named in the
docstrings), counts are ``GROUP BY`` an indexed column, lists use keyset pagination (never
``OFFSET``) and every list has a ``LIMIT``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, case, cast, func, or_, select, text
from sqlalchemy.orm import Session

from ehi_bridge.alerts.models import Alert
from ehi_bridge.connections.models import Connection
from ehi_bridge.exports.models import Export
from ehi_bridge.exports.state import ExportStatus
from ehi_bridge.records.models import IngestError, Resource
from ehi_bridge.sources.models import SourceGrant
from ehi_bridge.webhooks import repository as inbox_repo
from ehi_bridge.webhooks.models import InboxEvent

# Status words shared with the inbox and export workflows (kept as plain strings here so the
# dashboard reads whatever the workflows write).
PARKED = "parked"
OPEN_EVENT_STATUSES = ("received", "retry", "parked")
EXPORT_DONE = ("complete", "partial")
EXPORT_FAILED = ("failed", "timed_out", "expired")
EXPORT_RETRYABLE = ("failed", "timed_out", "expired", "cancelled")

HISTOGRAM_BUCKETS: tuple[tuple[str, float | None], ...] = (
    ("< 5 min", 300),
    ("5-15 min", 900),
    ("15-30 min", 1800),
    ("30-60 min", 3600),
    ("1-2 h", 7200),
    ("2-6 h", 21600),
    ("6-24 h", 86400),
    ("> 24 h", None),
)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


# -- overview -----------------------------------------------------------------------------


def count_by(session: Session, column: Any) -> dict[str, int]:
    """``SELECT column, count(*) … GROUP BY column``; ``column`` must be indexed."""
    rows = session.execute(select(column, func.count()).group_by(column)).all()
    return {str(key) if key is not None else "(none)": int(n) for key, n in rows}


def _hour_bucket(session: Session, column: Any) -> ColumnElement[Any]:
    if _dialect(session) == "postgresql":
        return func.to_char(
            func.date_trunc("hour", func.timezone("UTC", column)), "YYYY-MM-DD HH24:00"
        )
    return func.strftime("%Y-%m-%d %H:00", column)


def deliveries_per_hour(session: Session, since: datetime) -> list[tuple[str, str, int]]:
    """(hour 'YYYY-MM-DD HH:00' UTC, event type, deliveries) since ``since``.

    Range scan of ``ix_inbox_events_received_at``.
    """
    hour = _hour_bucket(session, InboxEvent.received_at).label("hour")
    rows = session.execute(
        select(hour, InboxEvent.event_type, func.count())
        .where(InboxEvent.received_at >= since)
        .group_by(hour, InboxEvent.event_type)
        .order_by(hour)
    ).all()
    return [(str(h), str(t), int(n)) for h, t, n in rows]


def _seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[Any]:
    if _dialect(session) == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * cast(86400.0, Float)


def connection_to_records_histogram(session: Session, since: datetime) -> list[tuple[str, int]]:
    """Time from ``connections.authorized_at`` to ``exports.completed_at`` for the exports
    finished since ``since``, in fixed buckets. ``ix_exports_status_created`` + primary key.
    """
    seconds = _seconds_between(session, Connection.authorized_at, Export.completed_at)
    whens = [
        (seconds < limit, index) for index, (_, limit) in enumerate(HISTOGRAM_BUCKETS) if limit
    ]
    bucket = case(*whens, else_=len(HISTOGRAM_BUCKETS) - 1).label("bucket")
    rows = session.execute(
        select(bucket, func.count())
        .select_from(Export)
        .join(Connection, Connection.id == Export.connection_id)
        .where(
            Export.status.in_(EXPORT_DONE),
            Export.created_at >= since,
            Export.completed_at.is_not(None),
            Connection.authorized_at.is_not(None),
        )
        .group_by(bucket)
    ).all()
    counts = {int(b): int(n) for b, n in rows}
    return [(label, counts.get(i, 0)) for i, (label, _) in enumerate(HISTOGRAM_BUCKETS)]


def failures_by_reason(session: Session) -> list[tuple[str, int]]:
    """Failed exports by reason (``ix_exports_status``) and parked events by type
    (``ix_inbox_events_status_id``), largest first."""
    export_rows = session.execute(
        select(Export.status, Export.failure_reason, func.count())
        .where(Export.status.in_(EXPORT_FAILED))
        .group_by(Export.status, Export.failure_reason)
    ).all()
    result = [(f"export {reason or status}", int(n)) for status, reason, n in export_rows]
    parked_rows = session.execute(
        select(InboxEvent.event_type, func.count())
        .where(InboxEvent.status == PARKED)
        .group_by(InboxEvent.event_type)
    ).all()
    result += [(f"parked {event_type}", int(n)) for event_type, n in parked_rows]
    return sorted(result, key=lambda item: (-item[1], item[0]))


def open_event_counts(session: Session) -> dict[str, int]:
    """Events not (yet) done with: received, queued, parked. A range of
    ``ix_inbox_events_status_id`` each, never the whole inbox (applied rows are unbounded)."""
    rows = session.execute(
        select(InboxEvent.status, func.count())
        .where(InboxEvent.status.in_(OPEN_EVENT_STATUSES))
        .group_by(InboxEvent.status)
    ).all()
    counts = {status: 0 for status in OPEN_EVENT_STATUSES}
    counts.update({str(status): int(n) for status, n in rows})
    return counts


def open_alert_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Alert)) or 0)


# -- connections list ---------------------------------------------------------------------


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, row_id = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        position = datetime.fromisoformat(created)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if position.tzinfo is None or "\x00" in row_id or len(row_id) > 64:
        return None  # naive datetimes cannot be compared with the stored ones
    try:
        return position.astimezone(UTC), row_id
    except OverflowError:  # e.g. 9999-12-31T23:59-23:59 is past the end of time in UTC
        return None


@dataclass(frozen=True, slots=True)
class ConnectionFilter:
    q: str = ""
    status: str = ""
    platform: str = ""
    mode: str = ""


def list_connections(
    session: Session, filters: ConnectionFilter, cursor: str | None, limit: int = 50
) -> tuple[Sequence[Connection], str | None]:
    """Newest first, keyset on (created_at, id): ``ix_connections_created_at``, or
    ``ix_connections_status_created`` with a status filter; a search is an equality on the
    indexed ``id``, ``external_id`` or ``org_connection_id``."""
    stmt = select(Connection)
    if filters.q:
        stmt = stmt.where(
            or_(
                Connection.external_id == filters.q,
                Connection.org_connection_id == filters.q,
                Connection.id == filters.q,
            )
        )
    if filters.status:
        stmt = stmt.where(Connection.status == filters.status)
    if filters.platform:
        stmt = stmt.where(Connection.platform_type == filters.platform)
    if filters.mode:
        stmt = stmt.where(Connection.api_mode == filters.mode)
    position = decode_cursor(cursor) if cursor else None
    if position is not None:
        created, row_id = position
        # Spelled out (not a row comparison) so the created_at index bounds the scan.
        stmt = stmt.where(
            Connection.created_at <= created,
            or_(Connection.created_at < created, Connection.id < row_id),
        )
    rows = session.scalars(
        stmt.order_by(Connection.created_at.desc(), Connection.id.desc()).limit(limit + 1)
    ).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(last.created_at, last.id)
    return rows, next_cursor


def distinct_values(session: Session, column: Any) -> list[str]:
    """Values of a low-cardinality indexed column (filters' choices), by a loose index
    scan: one index probe per distinct value instead of reading every entry."""
    table, name = column.table.name, column.name  # model identifiers, never user input
    sql = text(
        f"WITH RECURSIVE t(v) AS ("
        f" SELECT min({name}) FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT min({name}) FROM {table} WHERE {name} > t.v) FROM t"
        f" WHERE t.v IS NOT NULL"
        f") SELECT v FROM t WHERE v IS NOT NULL LIMIT 200"
    )
    return sorted(str(v) for v in session.scalars(sql))


# -- one connection -----------------------------------------------------------------------


def find_connection(session: Session, key: str) -> Connection | None:
    found = session.get(Connection, key)
    if found is not None:
        return found
    return session.scalars(
        select(Connection).where(Connection.org_connection_id == key)
    ).one_or_none()


def connection_events(
    session: Session, org_connection_id: str | None, limit: int = 100
) -> Sequence[InboxEvent]:
    if not org_connection_id:
        return []
    return inbox_repo.newest_of_org_connection(
        session, select(InboxEvent), org_connection_id, limit
    )


def connection_exports(session: Session, connection_id: str, limit: int = 20) -> Sequence[Export]:
    """``ix_exports_connection_id``."""
    return session.scalars(
        select(Export)
        .where(Export.connection_id == connection_id)
        .order_by(Export.id.desc())
        .limit(limit)
    ).all()


def resources_by_type(session: Session, connection_id: str) -> list[tuple[str, int]]:
    """Index-only on ``ix_resources_connection_type_id``."""
    rows = session.execute(
        select(Resource.resource_type, func.count())
        .where(Resource.connection_id == connection_id)
        .group_by(Resource.resource_type)
        .order_by(Resource.resource_type)
    ).all()
    return [(str(t), int(n)) for t, n in rows]


def patient_resource(session: Session, connection_id: str) -> bytes | None:
    """The connection's first stored Patient resource, up to ``RAW_PREVIEW_BYTES`` (the
    caller audits the read first)."""
    raw = session.scalar(
        select(func.substr(Resource.raw, 1, RAW_PREVIEW_BYTES))
        .where(Resource.connection_id == connection_id, Resource.resource_type == "Patient")
        .order_by(Resource.id)
        .limit(1)
    )
    return bytes(raw) if raw is not None else None


def ingest_error_counts(session: Session, export_ids: Sequence[int]) -> dict[int, int]:
    """``ix_ingest_errors_export_id``."""
    if not export_ids:
        return {}
    rows = session.execute(
        select(IngestError.export_id, func.count())
        .where(IngestError.export_id.in_(list(export_ids)), IngestError.kind == "rejected")
        .group_by(IngestError.export_id)
    ).all()
    return {int(e): int(n) for e, n in rows if e is not None}


@dataclass(frozen=True, slots=True)
class ResourceRow:
    id: int
    resource_type: str
    resource_id: str
    version: int
    last_updated: str | None
    ingested_at: datetime
    revoked: bool
    head: bytes  # the first ``RAW_PREVIEW_BYTES`` of the stored resource
    size: int


RAW_PREVIEW_BYTES = 20_000


def list_resources(
    session: Session, connection_id: str, resource_type: str, after_id: int, limit: int = 25
) -> tuple[list[ResourceRow], int | None]:
    """Keyset on ``ix_resources_connection_type_id`` (connection_id, resource_type, id).
    Reads only a prefix of each resource: a Binary can be many megabytes."""
    rows = session.execute(
        select(
            Resource.id,
            Resource.resource_type,
            Resource.resource_id,
            Resource.version,
            Resource.last_updated,
            Resource.ingested_at,
            Resource.revoked,
            func.substr(Resource.raw, 1, RAW_PREVIEW_BYTES),
            func.length(Resource.raw),
        )
        .where(
            Resource.connection_id == connection_id,
            Resource.resource_type == resource_type,
            Resource.id > after_id,
        )
        .order_by(Resource.id)
        .limit(limit + 1)
    ).all()
    result = [
        ResourceRow(
            id=int(r[0]),
            resource_type=str(r[1]),
            resource_id=str(r[2]),
            version=int(r[3]),
            last_updated=r[4],
            ingested_at=r[5],
            revoked=bool(r[6]),
            head=bytes(r[7] or b""),
            size=int(r[8] or 0),
        )
        for r in rows
    ]
    if len(result) > limit:
        return result[:limit], result[limit - 1].id
    return result, None


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    event_type: str = ""
    status: str = ""
    org_connection_id: str = ""


def list_events(
    session: Session, filters: EventFilter, before_id: int | None, limit: int = 50
) -> tuple[Sequence[InboxEvent], int | None]:
    """Newest first, keyset on id: the primary key, ``ix_inbox_events_status_id`` with a
    status filter, ``ix_inbox_events_org_connection_id`` (see ``newest_of_org_connection``)
    / ``…_event_type`` otherwise."""
    stmt = select(InboxEvent)
    if filters.event_type:
        stmt = stmt.where(InboxEvent.event_type == filters.event_type)
    if filters.status:
        stmt = stmt.where(InboxEvent.status == filters.status)
    if before_id is not None:
        stmt = stmt.where(InboxEvent.id < before_id)
    rows: Sequence[InboxEvent]
    if filters.org_connection_id:
        rows = inbox_repo.newest_of_org_connection(
            session, stmt, filters.org_connection_id, limit + 1
        )
    else:
        rows = session.scalars(stmt.order_by(InboxEvent.id.desc()).limit(limit + 1)).all()
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1].id
    return rows, None


def get_events(session: Session, ids: Sequence[int]) -> Sequence[InboxEvent]:
    return session.scalars(select(InboxEvent).where(InboxEvent.id.in_(list(ids)))).all()


# -- failures -----------------------------------------------------------------------------


def parked_events(session: Session, limit: int = 50) -> Sequence[InboxEvent]:
    """``ix_inbox_events_status_id``."""
    return session.scalars(
        select(InboxEvent)
        .where(InboxEvent.status == PARKED)
        .order_by(InboxEvent.id.desc())
        .limit(limit)
    ).all()


def failed_exports(session: Session, limit: int = 50) -> Sequence[Export]:
    """``ix_exports_status_created``."""
    return session.scalars(
        select(Export)
        .where(Export.status.in_(EXPORT_FAILED))
        .order_by(Export.created_at.desc(), Export.id.desc())
        .limit(limit)
    ).all()


def recent_alerts(session: Session, limit: int = 50) -> Sequence[Alert]:
    """Primary key, newest first."""
    return session.scalars(select(Alert).order_by(Alert.id.desc()).limit(limit)).all()


# -- connect page -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PatientConnectionStatus:
    platform_type: str | None
    status: str
    created_at: datetime
    export_status: str | None


def connections_of_external_id(
    session: Session, external_id: str, limit: int = 20
) -> list[PatientConnectionStatus]:
    """``ix_connections_external_id``, then ``ix_exports_connection_id`` for those few."""
    connections = session.scalars(
        select(Connection)
        .where(Connection.external_id == external_id)
        .order_by(Connection.created_at.desc())
        .limit(limit)
    ).all()
    latest: dict[str, str] = {}
    if connections:
        rows = session.execute(
            select(Export.connection_id, Export.status)
            .where(Export.connection_id.in_([c.id for c in connections]))
            .order_by(Export.id)
        ).all()
        latest = {str(cid): str(status) for cid, status in rows}
    return [
        PatientConnectionStatus(
            platform_type=c.platform_type,
            status=c.status,
            created_at=c.created_at,
            export_status=latest.get(c.id),
        )
        for c in connections
    ]


@dataclass(frozen=True, slots=True)
class DirectFacts:
    """A direct (SMART) connection's grant and latest sync, for the connections list."""

    last_synced_at: datetime | None
    token_expires_at: datetime | None
    failure_reason: str | None
    syncing: bool


def direct_facts(session: Session, connection_ids: Sequence[str]) -> dict[str, DirectFacts]:
    """Per connection id (those with a grant): last sync, token expiry, why it last failed."""
    if not connection_ids:
        return {}
    grants = session.scalars(
        select(SourceGrant).where(SourceGrant.connection_id.in_(list(connection_ids)))
    ).all()
    if not grants:
        return {}
    newest = (
        select(func.max(Export.id))
        .where(Export.connection_id.in_([g.connection_id for g in grants]))
        .group_by(Export.connection_id)
    )
    exports = session.scalars(select(Export).where(Export.id.in_(newest)))
    latest = {e.connection_id: e for e in exports}
    facts = {}
    for grant in grants:
        export = latest.get(grant.connection_id)
        reason = export.failure_reason if export is not None else None
        facts[grant.connection_id] = DirectFacts(
            last_synced_at=grant.last_synced_at,
            token_expires_at=grant.expires_at,
            failure_reason=reason or grant.last_error,
            syncing=export is not None and export.status in ExportStatus.ACTIVE,
        )
    return facts
