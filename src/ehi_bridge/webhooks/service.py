"""Applying inbox events to connections and exports, a batch per transaction.

``apply_batch`` claims up to a batch of due inbox rows, runs each one's transition and
commits them together: statuses, connection and export changes, alert rows and the
follow-up work (outbox rows) in ONE transaction. Each row's effects are idempotent: a row
past ``received``/``retry`` is never claimed again, and replaying one re-runs transitions
that find their change made.

A row that fails never fails its batch. Payloads are validated before any write; if a
write still fails, the batch is rolled back to its savepoint and redone one row per
savepoint, so only the failing row is retried (with exponential backoff, as a ``retry``
row with ``next_attempt_at``: no thread or slot waits for it) and, after
``EHI_EVENT_MAX_ATTEMPTS``, parked with an alert.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from ehi_bridge.alerts.service import deliver_held, hold_deliveries, raise_alert
from ehi_bridge.config import Settings
from ehi_bridge.connections import repository as connections_repo
from ehi_bridge.connections.models import Connection
from ehi_bridge.connections.repository import LockedConnection
from ehi_bridge.connections.state import (
    ConnectionState,
    ConnectionStatus,
    Transition,
    confirm_reauthorized,
    on_authorization_revoked,
    on_connection_success,
    on_export_activity,
)
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import WRITE_GATE_RELEASED_AT, WRITE_GATE_SECONDS, Database
from ehi_bridge.exports import repository as exports_repo
from ehi_bridge.exports.models import Export
from ehi_bridge.exports.state import ExportEvent, ExportStatus
from ehi_bridge.outbox import repository as outbox_repo
from ehi_bridge.records import repository as records_repo
from ehi_bridge.webhooks import repository as inbox_repo
from ehi_bridge.webhooks import schemas
from ehi_bridge.webhooks.repository import Failure, PendingEvent

log = structlog.get_logger(__name__)

DEFAULT_BATCH = 256


class EventRejected(Exception):
    """The stored event cannot be applied as it stands (retried, then parked)."""


class OwnershipConflict(EventRejected):
    """A signed event names another patient than the connect link recorded for the
    connection. Neither is trusted silently: the event is parked at once, nothing of it is
    applied, and an operator is alerted to decide (replay it after correcting the link)."""

    def __init__(self, connection_id: str) -> None:
        super().__init__("ownership conflict: the event names another external_id")
        self.connection_id = connection_id


# ``failure_reason`` values Fasten documents; anything else is stored and alerted as "other"
# (text from outside never reaches an alert or a log verbatim).
KNOWN_FAILURE_REASONS = frozenset(
    {
        "token_refresh_failure",
        "scope_patient_missing",
        "resource_patient_failure",
        "resource_invalid_content",
        "suppressed_please_contact",
        "tefca_no_documents_found",
    }
)


def known_failure_reason(reason: object) -> str:
    return reason if isinstance(reason, str) and reason in KNOWN_FAILURE_REASONS else "other"


@dataclass
class BatchResult:
    """What one ``apply_batch`` transaction did (after it committed)."""

    claimed: int = 0
    applied: list[int] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    follow_ups: list[outbox_repo.FollowUp] = field(default_factory=list)
    # How long the write transaction held the receiver's commits back: SQLite's write gate
    # from taking it to the commit (elsewhere the whole call).
    transaction_seconds: float = 0.0
    # time.perf_counter() when it ended (SQLite: at the gate's release, before the sync).
    write_ended_at: float | None = None

    @property
    def parked(self) -> list[int]:
        return [f.inbox_id for f in self.failures if f.next_attempt_at is None]


@dataclass(frozen=True, slots=True)
class _Parsed:
    row: PendingEvent
    data: BaseModel
    at: datetime


@dataclass
class _BatchExports:
    """The exports a batch's export events can name, loaded once for the batch: by Fasten
    task id, and per connection the ones still waiting for a task id (oldest first)."""

    by_task: dict[str, Export] = field(default_factory=dict)
    waiting: dict[str, list[Export]] = field(default_factory=dict)

    def add(self, export: Export) -> None:
        if export.task_id:
            self.by_task[export.task_id] = export
        elif export.status in ExportStatus.WAITING:
            self.waiting.setdefault(export.connection_id, []).append(export)

    def take_waiting(self, connection_id: str) -> Export | None:
        """The newest export of the connection still waiting for its task id."""
        waiting = self.waiting.get(connection_id, [])
        while waiting:
            export = waiting.pop()
            if export.task_id is None and export.status in ExportStatus.WAITING:
                return export
        return None


@dataclass
class _Context:
    """What the appliers of one batch share: settings, the locked connections, follow-ups."""

    session: Session
    settings: Settings
    connections: dict[str, LockedConnection]
    follow_ups: list[outbox_repo.FollowUp] = field(default_factory=list)
    exports: _BatchExports = field(default_factory=_BatchExports)
    # Connections whose new export is written with the next read of exports, or at the end:
    # one INSERT for a batch of onboardings instead of a flush per connection.
    exports_to_request: list[str] = field(default_factory=list)


def _load_exports(ctx: _Context, parsed: Sequence[_Parsed]) -> None:
    task_ids: set[str] = set()
    connection_ids: set[str] = set()
    for item in parsed:
        data = item.data
        if not isinstance(data, schemas.ExportSuccess | schemas.ExportFailed):
            continue
        if data.task_id:
            task_ids.add(data.task_id)
        connection = _connection(ctx, data.org_connection_id)
        if connection is not None:
            connection_ids.add(connection.id)
    ctx.exports = _BatchExports()
    for export in exports_repo.for_export_events(ctx.session, task_ids, connection_ids):
        ctx.exports.add(export)


def _save_connections(ctx: _Context) -> None:
    """Write the batch's connections as they are now (new ones once, complete): before an
    export that refers to one is written, and at the end of the batch."""
    connections_repo.save_locked(ctx.session, ctx.connections.values())


def _write_requested_exports(ctx: _Context, *, index: bool = True) -> None:
    if not ctx.exports_to_request:
        return
    _save_connections(ctx)
    ids = exports_repo.create_requested(ctx.session, ctx.exports_to_request, trigger="auto")
    ctx.exports_to_request.clear()
    if index:  # export events later in the batch may name them
        for export in exports_repo.by_ids(ctx.session, ids):
            ctx.exports.add(export)


def _event_time(envelope: schemas.Envelope, row: PendingEvent) -> datetime:
    if envelope.date is not None:
        when = envelope.date
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return row.received_at


def parse(row: PendingEvent) -> _Parsed:
    """Validate a stored event's payload (no I/O); EventRejected when it cannot apply."""
    try:
        envelope = schemas.Envelope.model_validate(orjson.loads(row.body))
        data = schemas.EVENT_MODELS[row.event_type].model_validate(envelope.data)
    except (ValidationError, orjson.JSONDecodeError) as exc:
        raise EventRejected(f"{row.event_type} payload does not validate") from exc
    return _Parsed(row, data, _event_time(envelope, row))


def apply_batch(
    db: Database,
    settings: Settings,
    *,
    limit: int = DEFAULT_BATCH,
    now: datetime | None = None,
    before_write: Callable[[], None] | None = None,
) -> BatchResult:
    """Apply up to ``limit`` due events in one transaction; what was done.

    On SQLite the rows are read and their payloads validated before the write transaction
    (which excludes every other writer, the webhook receiver's included, for as long as it
    lasts) and only those still due when it begins are applied. On PostgreSQL they are
    claimed inside it (``SKIP LOCKED``), so concurrent appliers take different rows.
    ``before_write`` is called right before the write transaction is asked for.
    """
    now = now or utcnow()
    early = None
    if db.is_sqlite:
        with db.read_session() as session:
            early = _prepare(settings, inbox_repo.claim_due(session, now, limit), now)
        if not early.rows:
            return BatchResult()
    if before_write is not None:
        before_write()
    started = time.perf_counter()
    with db.hot_write_session() as session:
        hold_deliveries(session)  # sinks may be slow: they are called after the gate
        result = _apply_claimed(session, settings, early, limit, now)
    ended = time.perf_counter()
    result.transaction_seconds = session.info.get(WRITE_GATE_SECONDS, ended - started)
    result.write_ended_at = session.info.get(WRITE_GATE_RELEASED_AT, ended)
    deliver_held(session)
    return result


def _apply_claimed(
    session: Session, settings: Settings, early: _Prepared | None, limit: int, now: datetime
) -> BatchResult:
    """Inside the write transaction: apply what is (still) due, record every outcome."""
    if early is None:
        prepared = _prepare(settings, inbox_repo.claim_due(session, now, limit), now)
    else:
        prepared = early.keep(inbox_repo.still_due(session, early.ids(), now))
    rows, parsed = prepared.rows, prepared.parsed
    if not rows:
        return BatchResult()
    result = BatchResult(claimed=len(rows), ignored=prepared.ignored, failures=prepared.failures)
    ctx = _Context(session, settings, {})
    conflicts: dict[int, str] = {}  # inbox id → connection whose owner it contradicts
    try:
        _apply_in_savepoint(ctx, parsed)
        result.applied = [item.row.id for item in parsed]
    except Exception:
        # One row's write failed: redo each row alone to find it; the rest still apply.
        _forget_unsaved(ctx, 0)
        for item in parsed:
            mark = len(ctx.follow_ups)
            try:
                _apply_in_savepoint(ctx, [item])
                result.applied.append(item.row.id)
            except OwnershipConflict as conflict:
                _forget_unsaved(ctx, mark)
                result.failures.append(
                    Failure(item.row.id, item.row.attempts + 1, str(conflict), None)
                )
                conflicts[item.row.id] = conflict.connection_id
            except Exception as exc:
                _forget_unsaved(ctx, mark)
                # Only our own words are stored: a driver's text could quote row values.
                result.failures.append(_failure(settings, item.row, type(exc).__name__, now))
    inbox_repo.finish(session, applied=result.applied, ignored=result.ignored, now=now)
    inbox_repo.record_failures(session, result.failures)
    for failure in result.failures:
        if failure.next_attempt_at is None:
            _park_alert(session, settings, rows, failure, conflicts.get(failure.inbox_id))
    outbox_repo.add(session, *ctx.follow_ups)
    result.follow_ups = ctx.follow_ups
    return result


def _apply_in_savepoint(ctx: _Context, items: Sequence[_Parsed]) -> None:
    """Apply ``items`` under a savepoint: all they write, or (raising) nothing."""
    with ctx.session.begin_nested():
        ctx.connections = connections_repo.lock_for_events(ctx.session, _touched(items))
        _load_exports(ctx, items)
        for item in items:
            _APPLIERS[item.row.event_type](ctx, item.row, item.data, item.at)
        _write_requested_exports(ctx, index=False)
        _save_connections(ctx)


def _forget_unsaved(ctx: _Context, follow_ups_kept: int) -> None:
    """After a savepoint rolled back: drop what its appliers queued, and the ORM's view."""
    del ctx.follow_ups[follow_ups_kept:]
    ctx.exports_to_request.clear()
    ctx.session.expire_all()


@dataclass
class _Prepared:
    """Claimed rows, sorted before any write: to apply, to ignore, failed validation."""

    rows: list[PendingEvent]
    parsed: list[_Parsed]
    ignored: list[int]
    failures: list[Failure]

    def ids(self) -> list[int]:
        return [row.id for row in self.rows]

    def keep(self, ids: set[int]) -> _Prepared:
        return _Prepared(
            [r for r in self.rows if r.id in ids],
            [p for p in self.parsed if p.row.id in ids],
            [i for i in self.ignored if i in ids],
            [f for f in self.failures if f.inbox_id in ids],
        )


def _prepare(settings: Settings, rows: list[PendingEvent], now: datetime) -> _Prepared:
    prepared = _Prepared(rows, [], [], [])
    for row in rows:
        if row.event_type not in schemas.KNOWN_TYPES:
            prepared.ignored.append(row.id)
            continue
        try:
            prepared.parsed.append(parse(row))
        except EventRejected as exc:
            prepared.failures.append(_failure(settings, row, str(exc), now))
    return prepared


def _touched(parsed: Sequence[_Parsed]) -> dict[str, str]:
    touched: dict[str, str] = {}
    for item in parsed:
        org_id = getattr(item.data, "org_connection_id", None)
        if isinstance(org_id, str) and org_id:
            touched.setdefault(org_id, item.row.api_mode)
    return touched


def _failure(settings: Settings, row: PendingEvent, error: str, now: datetime) -> Failure:
    attempt = row.attempts + 1
    if attempt >= max(1, settings.event_max_attempts):
        return Failure(row.id, attempt, error, None)
    delay = settings.event_retry_interval_seconds * 2 ** (attempt - 1)
    return Failure(row.id, attempt, error, now + timedelta(seconds=delay))


def _park_alert(
    session: Session,
    settings: Settings,
    rows: Sequence[PendingEvent],
    failure: Failure,
    conflict_with: str | None,
) -> None:
    row = next(r for r in rows if r.id == failure.inbox_id)
    if conflict_with is not None:
        raise_alert(
            session,
            settings,
            kind="ownership_conflict",
            dedup_key=f"ownership_conflict:{row.id}:{row.replays}",
            message=(
                f"Event {row.id} parked: it names another patient than the connect "
                f"link recorded for connection {conflict_with}"
            ),
            context={"inbox_id": row.id, "connection_id": conflict_with},
        )
        return
    raise_alert(
        session,
        settings,
        kind="event_parked",
        dedup_key=f"event_parked:{row.id}:{row.replays}",
        message=f"Event {row.id} ({row.event_type}) parked after {failure.attempts} attempts",
        context={"inbox_id": row.id, "event_type": row.event_type},
    )


def _connection(ctx: _Context, org_connection_id: str | None) -> LockedConnection | None:
    # TEFCA payloads may omit ids: the event is kept, there is nothing to link.
    return ctx.connections.get(org_connection_id) if org_connection_id else None


def _state(connection: Connection | LockedConnection) -> ConnectionState:
    status = None if connection.status == ConnectionStatus.PENDING else connection.status
    return ConnectionState(status, connection.status_changed_at)


def _apply_transition(connection: Connection | LockedConnection, result: Transition) -> None:
    if not result.changed:
        return
    connection.status = result.state.status or ConnectionStatus.PENDING
    connection.status_changed_at = result.state.changed_at
    connection.updated_at = utcnow()
    if connection.status == ConnectionStatus.AUTHORIZED:
        connection.authorized_at = result.state.changed_at
    if connection.status == ConnectionStatus.REVOKED:
        connection.revoked_at = result.state.changed_at


def _fill(connection: LockedConnection, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value not in (None, "") and getattr(connection, name) in (None, ""):
            setattr(connection, name, value)


def _connection_success(ctx: _Context, row: PendingEvent, data: Any, at: datetime) -> None:
    event: schemas.ConnectionSuccess = data
    connection = _connection(ctx, event.org_connection_id)
    if connection is None:
        return
    if event.external_id and connection.external_id and event.external_id != connection.external_id:
        raise OwnershipConflict(connection.id)
    _fill(
        connection,
        {
            "external_id": event.external_id,
            "platform_type": event.platform_type,
            "endpoint_id": event.endpoint_id,
            "brand_id": event.brand_id,
            "portal_id": event.portal_id,
            "request_id": event.request_id,
            "external_state": event.external_state,
            "scope": event.scope,
            "consent_expires_at": event.consent_expires_at,
        },
    )
    result = on_connection_success(_state(connection), event.connection_status, at)
    _apply_transition(connection, result)
    if result.verify:
        ctx.follow_ups.append(outbox_repo.verify_connection(connection.id, str(row.id)))
    if result.request_export and ctx.settings.auto_request_export:
        ctx.exports_to_request.append(connection.id)


def reauthorize_if_confirmed(
    db: Database, settings: Settings, connection_id: str, fasten_status: str | None
) -> int | None:
    """Apply Fasten's answer about a revoked connection; the new export's id, if any."""
    if fasten_status != ConnectionStatus.AUTHORIZED:
        return None
    with db.session() as session:
        connection = connections_repo.get(session, connection_id)
        if connection is None:
            return None
        result = confirm_reauthorized(_state(connection), utcnow())
        _apply_transition(connection, result)
        if result.request_export and settings.auto_request_export:
            return exports_repo.create(session, connection.id, trigger="auto").id
        return None


def _export_for_task(ctx: _Context, connection: LockedConnection, task_id: str | None) -> Export:
    _write_requested_exports(ctx)
    if task_id and (known := ctx.exports.by_task.get(task_id)) is not None:
        return known
    export = ctx.exports.take_waiting(connection.id)
    if export is not None:
        export.task_id = task_id
    else:
        _save_connections(ctx)
        export = exports_repo.create(
            ctx.session,
            connection.id,
            trigger="webhook",
            status=ExportStatus.PENDING,
            task_id=task_id,
        )
    ctx.exports.add(export)
    return export


def _export_success(ctx: _Context, row: PendingEvent, data: Any, at: datetime) -> None:
    event: schemas.ExportSuccess = data
    connection = _connection(ctx, event.org_connection_id)
    if connection is None:
        return
    _apply_transition(connection, on_export_activity(_state(connection), at))
    _fill(connection, {"org_id": event.org_id})
    export = _export_for_task(ctx, connection, event.task_id)
    if connection.status == ConnectionStatus.REVOKED:
        exports_repo.move(export, ExportEvent.REVOKED)
        return
    if not exports_repo.move(export, ExportEvent.SUCCEEDED):
        return  # a repeat: this file is already being (or was) processed
    export.success_event_id = row.event_id
    export.succeeded_at = at
    export.file_expires_at = at + timedelta(hours=ctx.settings.export_file_lifetime_hours)
    export.stats_total = event.stats.total_resources
    export.stats_by_type = event.stats.total_by_resource_type
    export.failure_reason = None
    ctx.follow_ups.append(outbox_repo.ingest_export(export.id, "webhook"))


def _export_failed(ctx: _Context, row: PendingEvent, data: Any, at: datetime) -> None:
    event: schemas.ExportFailed = data
    connection = _connection(ctx, event.org_connection_id)
    if connection is None:
        return
    _apply_transition(connection, on_export_activity(_state(connection), at))
    export = _export_for_task(ctx, connection, event.task_id)
    if not exports_repo.move(export, ExportEvent.FAILED):
        return
    reason = known_failure_reason(event.failure_reason)
    export.failure_reason = reason
    raise_alert(
        ctx.session,
        ctx.settings,
        kind="export_failed",
        dedup_key=f"export_failed:{export.id}",
        message=f"Export {export.id} failed: {reason}",
        context={"export_id": export.id, "connection_id": connection.id, "failure_reason": reason},
    )


def _authorization_revoked(ctx: _Context, row: PendingEvent, data: Any, at: datetime) -> None:
    event: schemas.AuthorizationRevoked = data
    connection = _connection(ctx, event.org_connection_id)
    if connection is None:
        return
    _fill(
        connection,
        {
            "platform_type": event.platform_type,
            "brand_id": event.brand_id,
            "portal_id": event.portal_id,
            "endpoint_id": event.endpoint_id,
        },
    )
    result = on_authorization_revoked(_state(connection), at)
    _apply_transition(connection, result)
    if not result.cancel_exports:
        return
    _write_requested_exports(ctx)
    for export in exports_repo.active_for_connection(ctx.session, connection.id):
        if exports_repo.move(export, ExportEvent.REVOKED):
            ctx.follow_ups.append(outbox_repo.cancel_export(export.id))
    if ctx.settings.revoked_records == "purge":
        records_repo.purge_connection(ctx.session, connection.id)
    else:
        records_repo.mark_connection_revoked(ctx.session, connection.id)


def _webhook_test(ctx: _Context, row: PendingEvent, data: Any, at: datetime) -> None:
    return  # nothing to change; it is marked applied with its batch


_APPLIERS: dict[str, Callable[[_Context, PendingEvent, Any, datetime], None]] = {
    schemas.CONNECTION_SUCCESS: _connection_success,
    schemas.EXPORT_SUCCESS: _export_success,
    schemas.EXPORT_FAILED: _export_failed,
    schemas.AUTHORIZATION_REVOKED: _authorization_revoked,
    schemas.WEBHOOK_TEST: _webhook_test,
}


def replay_events(db: Database, ids: Sequence[int]) -> int:
    """Mark events for another pass; the applier picks them up."""
    with db.session() as session:
        return inbox_repo.mark_for_replay(session, list(ids))
