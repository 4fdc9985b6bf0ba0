"""Queries and writes of exports. All SQL for this table lives here."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, insert, or_, select
from sqlalchemy.orm import Session

from ehi_bridge.db.base import utcnow
from ehi_bridge.exports.models import Export
from ehi_bridge.exports.state import ExportStatus, transition
from ehi_bridge.outbox import repository as outbox_repo

EXPORTS = cast(Table, Export.__table__)


def get(session: Session, export_id: int, *, for_update: bool = False) -> Export | None:
    return session.get(Export, export_id, with_for_update=for_update or None)


def for_export_events(
    session: Session, task_ids: Collection[str], connection_ids: Collection[str]
) -> Sequence[Export]:
    """What a batch of export events can name: the exports of these Fasten tasks, and the
    ones of these connections still waiting for a task id; oldest first."""
    if not task_ids and not connection_ids:
        return []
    return session.scalars(
        select(Export)
        .where(
            or_(
                Export.task_id.in_(task_ids),
                Export.connection_id.in_(connection_ids)
                & Export.task_id.is_(None)
                & Export.status.in_(ExportStatus.WAITING),
            )
        )
        .order_by(Export.id)
    ).all()


def by_ids(session: Session, ids: Collection[int]) -> Sequence[Export]:
    return session.scalars(select(Export).where(Export.id.in_(ids)).order_by(Export.id)).all()


def active_for_connection(session: Session, connection_id: str) -> Sequence[Export]:
    return session.scalars(
        select(Export).where(
            Export.connection_id == connection_id, Export.status.in_(ExportStatus.ACTIVE)
        )
    ).all()


def for_connection(session: Session, connection_id: str) -> Sequence[Export]:
    return session.scalars(
        select(Export).where(Export.connection_id == connection_id).order_by(Export.id.desc())
    ).all()


def move(export: Export, event: str) -> bool:
    """Apply ``event`` through the state machine; False when it does not apply."""
    target = transition(export.status, event)
    if target is None:
        return False
    export.status = target
    export.updated_at = utcnow()
    return True


def create(
    session: Session,
    connection_id: str,
    *,
    trigger: str,
    status: str = ExportStatus.REQUESTED,
    task_id: str | None = None,
    source: str = "fasten",
) -> Export:
    now = utcnow()
    if source == "smart":
        status = ExportStatus.DOWNLOADING  # a sync has no one to ask: it starts pulling
    export = Export(
        source=source,
        connection_id=connection_id,
        task_id=task_id,
        status=status,
        trigger=trigger,
        created_at=now,
        updated_at=now,
        bytes_downloaded=0,
        attempts=0,
    )
    session.add(export)
    session.flush()
    if source == "smart":
        # The sync is written with the export: whoever creates one, it runs.
        outbox_repo.add(session, outbox_repo.sync_source(export.id))
    elif status == ExportStatus.REQUESTED:
        # Asking Fasten is written with the export: whoever creates one, it gets asked.
        outbox_repo.add(session, outbox_repo.request_export(export.id))
    return export


def create_requested(session: Session, connection_ids: Sequence[str], *, trigger: str) -> list[int]:
    """One new export per connection, to ask Fasten for, each with its request in the outbox:
    one statement for many (the batch applier's onboarding path), ids in the given order."""
    if not connection_ids:
        return []
    now = utcnow()
    rows = [
        {
            "connection_id": connection_id,
            "status": ExportStatus.REQUESTED,
            "trigger": trigger,
            "created_at": now,
            "updated_at": now,
            "bytes_downloaded": 0,
            "attempts": 0,
        }
        for connection_id in connection_ids
    ]
    # Matched by connection, not by position: RETURNING in the rows' order
    # (sort_by_parameter_order) makes SQLite insert one row per statement.
    inserted = session.connection().execute(
        insert(EXPORTS).returning(EXPORTS.c.id, EXPORTS.c.connection_id), rows
    )
    ids_of: dict[str, list[int]] = {}
    for export_id, connection_id in inserted:
        ids_of.setdefault(connection_id, []).append(export_id)
    ids = [ids_of[connection_id].pop() for connection_id in connection_ids]
    outbox_repo.add(session, *(outbox_repo.request_export(export_id) for export_id in ids))
    return ids


def due_deadlines(session: Session, now: datetime, limit: int) -> list[int]:
    """Exports still waiting for Fasten's webhook whose deadline has passed."""
    return list(
        session.scalars(
            select(Export.id)
            .where(
                Export.status.in_((ExportStatus.REQUESTED, ExportStatus.PENDING)),
                Export.deadline_at <= now,
            )
            .order_by(Export.deadline_at)
            .limit(limit)
        )
    )


def stalled(session: Session, now: datetime, quiet_for: timedelta, limit: int) -> Sequence[Export]:
    """Exports our side should be moving that have not changed for ``quiet_for``: not yet
    asked for (no task id), or downloading or ingesting. Waiting for Fasten's webhook
    before the deadline is not a stall (the deadline covers it)."""
    return session.scalars(
        select(Export)
        .where(
            Export.updated_at < now - quiet_for,
            or_(
                (Export.status == ExportStatus.REQUESTED) & Export.task_id.is_(None),
                Export.status.in_((ExportStatus.DOWNLOADING, ExportStatus.INGESTING)),
            ),
        )
        .order_by(Export.updated_at)
        .limit(limit)
    ).all()


def recent(session: Session, limit: int, status: str | None = None) -> Sequence[Export]:
    query = select(Export).order_by(Export.id.desc()).limit(limit)
    if status:
        query = query.where(Export.status == status)
    return session.scalars(query).all()
