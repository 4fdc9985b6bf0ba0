"""Applying inbox events to connections and exports.

``apply_event`` runs in ONE transaction: it loads the inbox row (locked), applies the
transition, marks the row applied. It is safe to run any number of times for one event —
the row's status makes later runs no-ops — and returns the follow-up work (export
workflows to start, alerts to raise) for the caller to launch after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from sqlalchemy.orm import Session

from ehi_bridge.config import Settings
from ehi_bridge.connections import repository as connections_repo
from ehi_bridge.connections.models import Connection
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
from ehi_bridge.db.engine import Database
from ehi_bridge.exports import repository as exports_repo
from ehi_bridge.exports.models import Export
from ehi_bridge.exports.state import ExportEvent, ExportStatus
from ehi_bridge.records import repository as records_repo
from ehi_bridge.webhooks import repository as inbox_repo
from ehi_bridge.webhooks import schemas
from ehi_bridge.webhooks.models import InboxEvent, InboxStatus

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AlertRequest:
    kind: str
    dedup_key: str
    message: str
    context: dict[str, str | int] = field(default_factory=dict)


@dataclass
class FollowUps:
    """Work to launch after the transaction commits."""

    run_exports: list[int] = field(default_factory=list)  # request + deadline watch
    ingest_exports: list[int] = field(default_factory=list)  # download + ingest
    cancelled_exports: list[int] = field(default_factory=list)
    verify_connections: list[str] = field(default_factory=list)  # success after revocation
    alerts: list[AlertRequest] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_exports": self.run_exports,
            "ingest_exports": self.ingest_exports,
            "cancelled_exports": self.cancelled_exports,
            "verify_connections": self.verify_connections,
            "alerts": [
                {
                    "kind": a.kind,
                    "dedup_key": a.dedup_key,
                    "message": a.message,
                    "context": a.context,
                }
                for a in self.alerts
            ],
        }


class EventRejected(Exception):
    """The stored event cannot be applied as it stands (it is parked, not retried forever)."""


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


def _event_time(envelope: schemas.Envelope, inbox: InboxEvent) -> datetime:
    if envelope.date is not None:
        when = envelope.date
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return inbox.received_at


def apply_event(db: Database, settings: Settings, inbox_id: int) -> FollowUps:
    with db.session() as session:
        inbox = inbox_repo.get(session, inbox_id, for_update=True)
        if inbox is None:
            raise EventRejected(f"inbox row {inbox_id} does not exist")
        if inbox.status in (InboxStatus.APPLIED, InboxStatus.IGNORED):
            return FollowUps()
        follow = FollowUps()
        if inbox.event_type not in schemas.KNOWN_TYPES:
            inbox.status = InboxStatus.IGNORED
            inbox.applied_at = utcnow()
            return follow
        try:
            envelope = schemas.Envelope.model_validate(orjson.loads(inbox.body))
            model = schemas.EVENT_MODELS[inbox.event_type]
            data = model.model_validate(envelope.data)
        except (ValidationError, orjson.JSONDecodeError) as exc:
            raise EventRejected(f"{inbox.event_type} payload does not validate") from exc
        at = _event_time(envelope, inbox)
        try:
            _APPLIERS[inbox.event_type](session, settings, inbox, data, at, follow)
        except OwnershipConflict as conflict:
            inbox.status = InboxStatus.PARKED
            inbox.last_error = str(conflict)
            follow.alerts.append(
                AlertRequest(
                    kind="ownership_conflict",
                    dedup_key=f"ownership_conflict:{inbox.id}:{inbox.replays}",
                    message=(
                        f"Event {inbox.id} parked: it names another patient than the connect "
                        f"link recorded for connection {conflict.connection_id}"
                    ),
                    context={"inbox_id": inbox.id, "connection_id": conflict.connection_id},
                )
            )
            return follow
        inbox.status = InboxStatus.APPLIED
        inbox.apply_count += 1
        inbox.applied_at = utcnow()
        inbox.last_error = None
        return follow


def _connection_for(
    session: Session, org_connection_id: str | None, api_mode: str
) -> Connection | None:
    if not org_connection_id:
        return None  # TEFCA payloads may omit ids: the event is kept, nothing to link
    connection = connections_repo.by_org_connection_id(session, org_connection_id)
    if connection is None:
        connection = connections_repo.create(
            session, org_connection_id, api_mode=api_mode, status=ConnectionStatus.PENDING
        )
    return connection


def _state(connection: Connection) -> ConnectionState:
    status = None if connection.status == ConnectionStatus.PENDING else connection.status
    return ConnectionState(status, connection.status_changed_at)


def _apply_transition(connection: Connection, result: Transition) -> None:
    if not result.changed:
        return
    connection.status = result.state.status or ConnectionStatus.PENDING
    connection.status_changed_at = result.state.changed_at
    connection.updated_at = utcnow()
    if connection.status == ConnectionStatus.AUTHORIZED:
        connection.authorized_at = result.state.changed_at
    if connection.status == ConnectionStatus.REVOKED:
        connection.revoked_at = result.state.changed_at


def _fill(connection: Connection, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value not in (None, "") and getattr(connection, name) in (None, ""):
            setattr(connection, name, value)


def _connection_success(
    session: Session,
    settings: Settings,
    inbox: InboxEvent,
    data: Any,
    at: datetime,
    follow: FollowUps,
) -> None:
    event: schemas.ConnectionSuccess = data
    connection = _connection_for(session, event.org_connection_id, inbox.api_mode)
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
        follow.verify_connections.append(connection.id)
    if result.request_export and settings.auto_request_export:
        export = exports_repo.create(session, connection.id, trigger="auto")
        follow.run_exports.append(export.id)


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


def _export_for_task(session: Session, connection: Connection, task_id: str | None) -> Export:
    if task_id:
        export = exports_repo.by_task_id(session, task_id)
        if export is not None:
            return export
    export = exports_repo.waiting_without_task(session, connection.id)
    if export is not None:
        export.task_id = task_id
        return export
    return exports_repo.create(
        session, connection.id, trigger="webhook", status=ExportStatus.PENDING, task_id=task_id
    )


def _export_success(
    session: Session,
    settings: Settings,
    inbox: InboxEvent,
    data: Any,
    at: datetime,
    follow: FollowUps,
) -> None:
    event: schemas.ExportSuccess = data
    connection = _connection_for(session, event.org_connection_id, inbox.api_mode)
    if connection is None:
        return
    _apply_transition(connection, on_export_activity(_state(connection), at))
    _fill(connection, {"org_id": event.org_id})
    export = _export_for_task(session, connection, event.task_id)
    if connection.status == ConnectionStatus.REVOKED:
        exports_repo.move(export, ExportEvent.REVOKED)
        return
    if not exports_repo.move(export, ExportEvent.SUCCEEDED):
        return  # a repeat: this file is already being (or was) processed
    export.success_event_id = inbox.event_id
    export.succeeded_at = at
    export.file_expires_at = at + timedelta(hours=settings.export_file_lifetime_hours)
    export.stats_total = event.stats.total_resources
    export.stats_by_type = event.stats.total_by_resource_type
    export.failure_reason = None
    follow.ingest_exports.append(export.id)


def _export_failed(
    session: Session,
    settings: Settings,
    inbox: InboxEvent,
    data: Any,
    at: datetime,
    follow: FollowUps,
) -> None:
    event: schemas.ExportFailed = data
    connection = _connection_for(session, event.org_connection_id, inbox.api_mode)
    if connection is None:
        return
    _apply_transition(connection, on_export_activity(_state(connection), at))
    export = _export_for_task(session, connection, event.task_id)
    if not exports_repo.move(export, ExportEvent.FAILED):
        return
    reason = known_failure_reason(event.failure_reason)
    export.failure_reason = reason
    follow.alerts.append(
        AlertRequest(
            kind="export_failed",
            dedup_key=f"export_failed:{export.id}",
            message=f"Export {export.id} failed: {reason}",
            context={
                "export_id": export.id,
                "connection_id": connection.id,
                "failure_reason": reason,
            },
        )
    )


def _authorization_revoked(
    session: Session,
    settings: Settings,
    inbox: InboxEvent,
    data: Any,
    at: datetime,
    follow: FollowUps,
) -> None:
    event: schemas.AuthorizationRevoked = data
    connection = _connection_for(session, event.org_connection_id, inbox.api_mode)
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
    for export in exports_repo.active_for_connection(session, connection.id):
        if exports_repo.move(export, ExportEvent.REVOKED):
            follow.cancelled_exports.append(export.id)
    if settings.revoked_records == "purge":
        records_repo.purge_connection(session, connection.id)
    else:
        records_repo.mark_connection_revoked(session, connection.id)


def _webhook_test(
    session: Session,
    settings: Settings,
    inbox: InboxEvent,
    data: Any,
    at: datetime,
    follow: FollowUps,
) -> None:
    log.info("webhook.test received", event_id=inbox.event_id, mode=inbox.api_mode)


_APPLIERS = {
    schemas.CONNECTION_SUCCESS: _connection_success,
    schemas.EXPORT_SUCCESS: _export_success,
    schemas.EXPORT_FAILED: _export_failed,
    schemas.AUTHORIZATION_REVOKED: _authorization_revoked,
    schemas.WEBHOOK_TEST: _webhook_test,
}


def record_failure(db: Database, inbox_id: int, attempt: int, error: str) -> None:
    with db.session() as session:
        inbox = inbox_repo.get(session, inbox_id)
        if inbox is not None:
            inbox.attempts = attempt
            inbox.last_error = error[:500]


def park(db: Database, inbox_id: int) -> AlertRequest | None:
    with db.session() as session:
        inbox = inbox_repo.get(session, inbox_id)
        if inbox is None:
            return None
        inbox.status = InboxStatus.PARKED
        return AlertRequest(
            kind="event_parked",
            dedup_key=f"event_parked:{inbox.id}:{inbox.replays}",
            message=f"Event {inbox.id} ({inbox.event_type}) parked after {inbox.attempts} attempts",
            context={"inbox_id": inbox.id, "event_type": inbox.event_type},
        )


def replay_events(db: Database, ids: Sequence[int]) -> int:
    """Mark events for another pass; the dispatcher picks them up (new workflow ids)."""
    with db.session() as session:
        return inbox_repo.mark_for_replay(session, list(ids))
