"""Queries and writes of the outbox. All SQL for this table lives here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ehi_bridge.db.base import utcnow
from ehi_bridge.db.plans import prefer_index_plans
from ehi_bridge.outbox.models import NOT_STARTED, OutboxItem, OutboxKind


@dataclass(frozen=True, slots=True)
class FollowUp:
    """One durable workflow to start: what it does, on what, under which id."""

    kind: str
    subject: str
    workflow_id: str


def request_export(export_id: int) -> FollowUp:
    return FollowUp(OutboxKind.REQUEST_EXPORT, str(export_id), f"export-{export_id}")


def ingest_export(export_id: int, key: str) -> FollowUp:
    return FollowUp(OutboxKind.INGEST_EXPORT, str(export_id), f"ingest-{export_id}-{key}")


def export_deadline(export_id: int) -> FollowUp:
    return FollowUp(OutboxKind.EXPORT_DEADLINE, str(export_id), f"deadline-{export_id}")


def cancel_export(export_id: int) -> FollowUp:
    return FollowUp(OutboxKind.CANCEL_EXPORT, str(export_id), f"cancel-{export_id}")


def verify_connection(connection_id: str, cause: str) -> FollowUp:
    return FollowUp(OutboxKind.VERIFY_CONNECTION, connection_id, f"verify-{connection_id}-{cause}")


def sync_source(export_id: int) -> FollowUp:
    return FollowUp(OutboxKind.SYNC_SOURCE, str(export_id), f"sync-{export_id}")


def add(session: Session, *items: FollowUp) -> None:
    """Write follow-ups in the caller's transaction; one already written is kept as it is."""
    if not items:
        return
    now = utcnow()
    rows = [
        {"workflow_id": i.workflow_id, "kind": i.kind, "subject": i.subject, "created_at": now}
        for i in items
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    # Parameters apart from the statement: one cached statement, not one compile per call.
    session.execute(insert(OutboxItem).on_conflict_do_nothing(index_elements=["workflow_id"]), rows)


def claim_not_started(session: Session, limit: int) -> list[FollowUp]:
    """Rows whose workflow has not been started, locked against other launchers."""
    prefer_index_plans(session)
    rows = session.execute(
        select(OutboxItem.kind, OutboxItem.subject, OutboxItem.workflow_id)
        .where(text(NOT_STARTED))
        .order_by(OutboxItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return [FollowUp(kind, subject, workflow_id) for kind, subject, workflow_id in rows]


def mark_started(session: Session, workflow_ids: Sequence[str], at: datetime) -> None:
    session.execute(
        update(OutboxItem)
        .where(OutboxItem.workflow_id.in_(workflow_ids), text(NOT_STARTED))
        .values(started_at=at)
    )
