"""Export lifecycle steps: each is one short transaction or one remote call, safe to repeat.

The durable ordering (request → wait for the deadline → poll; success → download → ingest
→ reconcile → notify) lives in ``exports/tasks.py``; this module holds what each step does.
An alert is recorded in the transaction that makes the change it reports, so a crash after
that commit cannot lose it (a repeated step finds the change made and raises nothing);
the sinks are sent to once the transaction commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import structlog
from sqlalchemy.exc import IntegrityError

from ehi_bridge.alerts.service import raise_alert
from ehi_bridge.config import Mode, Settings
from ehi_bridge.connections import repository as connections_repo
from ehi_bridge.connections.models import Connection
from ehi_bridge.connections.state import ConnectionStatus
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.exports import repository as exports_repo
from ehi_bridge.exports.models import Export
from ehi_bridge.exports.state import ExportEvent, ExportStatus
from ehi_bridge.outbox import repository as outbox_repo
from ehi_bridge.webhooks import repository as inbox_repo
from ehi_bridge.webhooks import schemas

log = structlog.get_logger(__name__)


class ExportNotAllowed(Exception):
    """The export cannot be requested or retried in the current state (answered 409)."""


def downloads_dir(settings: Settings) -> Path:
    path = settings.data_dir / "downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def download_path(settings: Settings, export_id: int) -> Path:
    return downloads_dir(settings) / f"export-{export_id}.jsonl"


def _mode(connection: Connection) -> Mode:
    return "live" if connection.api_mode == "live" else "test"


# --- requesting -------------------------------------------------------------------------


def request_export(db: Database, connection_id: str, trigger: str) -> Export:
    """Create a new export for an authorized connection (API, CLI, re-request on expiry)."""
    with db.session() as session:
        connection = connections_repo.find(session, connection_id)
        if connection is None:
            raise LookupError(connection_id)
        smart = connection.source == "smart"
        if connection.status != ConnectionStatus.AUTHORIZED or not (
            connection.org_connection_id or smart
        ):
            raise ExportNotAllowed(f"connection is {connection.status}, not authorized")
        active = exports_repo.active_for_connection(session, connection.id)
        if active:
            return active[0]
        return exports_repo.create(
            session, connection.id, trigger=trigger, source="smart" if smart else "fasten"
        )


def retry_export(db: Database, export_id: int) -> Export:
    """A fresh export for the same connection as a finished or failed one."""
    with db.read_session() as session:
        export = exports_repo.get(session, export_id)
        if export is None:
            raise LookupError(str(export_id))
        connection_id = export.connection_id
    return request_export(db, connection_id, trigger="retry")


@dataclass(frozen=True, slots=True)
class RequestTarget:
    export_id: int
    org_connection_id: str
    mode: Mode
    platform_type: str | None


def request_target(db: Database, export_id: int) -> RequestTarget | None:
    """What to ask Fasten for, or None when this export no longer needs asking."""
    with db.read_session() as session:
        export = exports_repo.get(session, export_id)
        if export is None or export.status != ExportStatus.REQUESTED or export.task_id:
            return None
        connection = connections_repo.get(session, export.connection_id)
        if connection is None or not connection.org_connection_id:
            return None
        return RequestTarget(
            export.id, connection.org_connection_id, _mode(connection), connection.platform_type
        )


def record_task(db: Database, settings: Settings, target: RequestTarget, task_id: str) -> None:
    """Store Fasten's task id and the deadline (the sweep watches it from then on)."""
    now = utcnow()
    deadline = now + timedelta(minutes=settings.export_deadline_minutes_for(target.platform_type))
    try:
        with db.session() as session:
            export = exports_repo.get(session, target.export_id, for_update=True)
            if export is None:
                return
            export.requested_at = export.requested_at or now
            export.deadline_at = export.deadline_at or deadline
            if export.task_id is None:
                export.task_id = task_id
            exports_repo.move(export, ExportEvent.TASK_CREATED)
    except IntegrityError:
        # A success webhook got here first and created an export row for this task.
        with db.session() as session:
            export = exports_repo.get(session, target.export_id, for_update=True)
            if export is not None:
                export.status = ExportStatus.CANCELLED
                export.last_error = "superseded by the export that received this task's webhook"


def request_failed(db: Database, settings: Settings, export_id: int, reason: str) -> bool:
    with db.session() as session:
        export = exports_repo.get(session, export_id, for_update=True)
        if export is None or not exports_repo.move(export, ExportEvent.FAILED):
            return False
        export.failure_reason = "request_failed"
        export.last_error = reason[:500]
        raise_alert(
            session,
            settings,
            kind="export_failed",
            dedup_key=f"export_failed:{export.id}",
            message=f"Export {export.id} could not be requested from Fasten ({reason})",
            context={"export_id": export.id, "connection_id": export.connection_id},
        )
        return True


# --- the sweep: deadlines and stalls ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepResult:
    deadlines: int  # deadline checks written to the outbox
    stalled: int  # exports found without progress


STALL_NOTES = {
    ExportStatus.REQUESTED: "not yet asked of Fasten",
    ExportStatus.DOWNLOADING: "the download has not finished",
    ExportStatus.INGESTING: "the ingest has not finished",
}


def sweep(db: Database, settings: Settings, now: datetime, limit: int = 500) -> SweepResult:
    """Start the deadline check of every export past its deadline, and alert (once per
    export and state) on exports our side has not moved for ``export_stall_minutes``.

    Nothing sleeps until a deadline: this runs every few seconds in the background.
    """
    quiet_for = timedelta(minutes=settings.export_stall_minutes)
    with db.session() as session:
        due = exports_repo.due_deadlines(session, now, limit)
        outbox_repo.add(session, *(outbox_repo.export_deadline(export_id) for export_id in due))
        stalled = exports_repo.stalled(session, now, quiet_for, limit)
        for export in stalled:
            note = STALL_NOTES.get(export.status, export.status)
            minutes = int((now - export.updated_at).total_seconds() // 60)
            export.last_error = f"stalled: {note} (no progress for {minutes} min)"
            raise_alert(
                session,
                settings,
                kind="export_stalled",
                dedup_key=f"export_stalled:{export.id}:{export.status}",
                message=f"Export {export.id} has made no progress for {minutes} min: {note}",
                context={"export_id": export.id, "connection_id": export.connection_id},
            )
    return SweepResult(len(due), len(stalled))


# --- the deadline -----------------------------------------------------------------------


def deadline_task(db: Database, export_id: int) -> tuple[str, Mode] | None:
    """(task id, mode) when the export is still waiting at its deadline, else None."""
    with db.read_session() as session:
        export = exports_repo.get(session, export_id)
        if export is None or export.status not in (ExportStatus.REQUESTED, ExportStatus.PENDING):
            return None
        connection = connections_repo.get(session, export.connection_id)
        mode = _mode(connection) if connection else "test"
        return (export.task_id or "", mode)


def deadline_passed(
    db: Database, settings: Settings, export_id: int, remote_status: str | None
) -> bool:
    """Still no webhook at the deadline: failed if Fasten says so, else timed out."""
    with db.session() as session:
        export = exports_repo.get(session, export_id, for_update=True)
        if export is None:
            return False
        if remote_status == "failed" and exports_repo.move(export, ExportEvent.FAILED):
            export.failure_reason = export.failure_reason or "suppressed_please_contact"
            raise_alert(
                session,
                settings,
                kind="export_failed",
                dedup_key=f"export_failed:{export.id}",
                message=f"Export {export.id} failed (found by status poll at the deadline)",
                context={"export_id": export.id, "connection_id": export.connection_id},
            )
            return True
        if not exports_repo.move(export, ExportEvent.DEADLINE_PASSED):
            return False
        note = (
            "Fasten reports success but no webhook arrived"
            if remote_status == "success"
            else f"Fasten status: {remote_status or 'unknown'}"
        )
        export.last_error = note
        raise_alert(
            session,
            settings,
            kind="export_timed_out",
            dedup_key=f"export_timed_out:{export.id}",
            message=f"Export {export.id} has not arrived by its deadline. {note}",
            context={"export_id": export.id, "connection_id": export.connection_id},
        )
        return True


# --- download and ingest ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DownloadTarget:
    export_id: int
    connection_id: str
    mode: Mode
    url: str
    expires_at: datetime | None


def download_target(db: Database, export_id: int) -> DownloadTarget | None:
    """The link to fetch, or None when the export is no longer downloading."""
    with db.read_session() as session:
        export = exports_repo.get(session, export_id)
        if export is None or export.status != ExportStatus.DOWNLOADING:
            return None
        if export.success_event_id is None:
            return None
        connection = connections_repo.get(session, export.connection_id)
        if connection is None:
            return None
        body = inbox_repo.body_of(session, export.success_event_id, connection.api_mode)
        if body is None:
            return None
        envelope = schemas.Envelope.model_validate(orjson.loads(body))
        url = schemas.ExportSuccess.model_validate(envelope.data).jsonl_url()
        if not url:
            return None
        return DownloadTarget(
            export.id, connection.id, _mode(connection), url, export.file_expires_at
        )


def record_download(db: Database, export_id: int, size: int) -> bool:
    with db.session() as session:
        export = exports_repo.get(session, export_id, for_update=True)
        if export is None:
            return False
        export.bytes_downloaded = size
        return (
            exports_repo.move(export, ExportEvent.DOWNLOADED)
            or export.status == ExportStatus.INGESTING
        )


def record_download_attempt(db: Database, export_id: int, error: str) -> None:
    with db.session() as session:
        export = exports_repo.get(session, export_id)
        if export is not None:
            export.attempts += 1
            export.last_error = error[:500]


def file_gone(db: Database, settings: Settings, export_id: int) -> bool:
    with db.session() as session:
        export = exports_repo.get(session, export_id, for_update=True)
        if export is None or not exports_repo.move(export, ExportEvent.FILE_GONE):
            return False
        raise_alert(
            session,
            settings,
            kind="export_expired",
            dedup_key=f"export_expired:{export.id}",
            message=f"Export {export.id}'s file expired before it could be downloaded",
            context={"export_id": export.id, "connection_id": export.connection_id},
        )
        return True


def download_refused(db: Database, settings: Settings, export_id: int, host: str) -> bool:
    with db.session() as session:
        export = exports_repo.get(session, export_id, for_update=True)
        if export is None or not exports_repo.move(export, ExportEvent.DOWNLOAD_REFUSED):
            return False
        export.failure_reason = "download_refused"
        raise_alert(
            session,
            settings,
            kind="download_refused",
            dedup_key=f"download_refused:{export.id}",
            message=f"Export {export.id}: download link host {host!r} is not on the allow-list",
            context={
                "export_id": export.id,
                "connection_id": export.connection_id,
                "host": host,
            },
        )
        return True


def download_failed(db: Database, settings: Settings, export_id: int, error: str) -> bool:
    with db.session() as session:
        export = exports_repo.get(session, export_id, for_update=True)
        if export is None or not exports_repo.move(export, ExportEvent.DOWNLOAD_REFUSED):
            return False
        export.failure_reason = "download_failed"
        export.last_error = error[:500]
        raise_alert(
            session,
            settings,
            kind="export_failed",
            dedup_key=f"export_failed:{export.id}",
            message=f"Export {export.id}: the file could not be downloaded ({error})",
            context={"export_id": export.id, "connection_id": export.connection_id},
        )
        return True


def ingest_inputs(
    db: Database, export_id: int
) -> tuple[str, int | None, dict[str, int] | None] | None:
    with db.read_session() as session:
        export = exports_repo.get(session, export_id)
        if export is None or export.status != ExportStatus.INGESTING:
            return None
        return export.connection_id, export.stats_total, export.stats_by_type


def record_ingest(
    db: Database, settings: Settings, export_id: int, report: dict[str, object], complete: bool
) -> bool:
    with db.session() as session:
        export = exports_repo.get(session, export_id, for_update=True)
        if export is None:
            return False
        moved = exports_repo.move(
            export, ExportEvent.INGESTED_COMPLETE if complete else ExportEvent.INGESTED_PARTIAL
        )
        if not moved:
            return False
        export.report = report
        resources = report.get("resources")
        export.ingested_total = resources if isinstance(resources, int) else None
        by_type = report.get("by_type")
        export.ingested_by_type = by_type if isinstance(by_type, dict) else None
        export.completed_at = utcnow()
        if complete:
            return True
        raise_alert(
            session,
            settings,
            kind="ingest_partial",
            dedup_key=f"ingest_partial:{export.id}",
            message=f"Export {export.id} ingested with differences from Fasten's counts",
            context={"export_id": export.id, "connection_id": export.connection_id},
        )
        return True


def rerequest_after_expiry(db: Database, settings: Settings, export_id: int) -> int | None:
    if not settings.rerequest_expired_exports:
        return None
    with db.read_session() as session:
        export = exports_repo.get(session, export_id)
        if export is None:
            return None
        connection_id = export.connection_id
    try:
        return request_export(db, connection_id, trigger="expired").id
    except ExportNotAllowed:
        return None
