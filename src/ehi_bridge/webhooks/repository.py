"""Queries and writes of the inbox. All SQL for this table lives here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, func, select, text, update
from sqlalchemy.orm import Session

from ehi_bridge.webhooks.models import HANDED_ON, InboxEvent, InboxStatus


def get(session: Session, inbox_id: int, *, for_update: bool = False) -> InboxEvent | None:
    return session.get(InboxEvent, inbox_id, with_for_update=for_update or None)


def received_batch(session: Session, limit: int) -> Sequence[tuple[int, int]]:
    """(id, replays) of deliveries committed but not yet handed to background work."""
    rows = session.execute(
        select(InboxEvent.id, InboxEvent.replays)
        .where(InboxEvent.status == InboxStatus.RECEIVED)
        .order_by(InboxEvent.id)
        .limit(limit)
    ).all()
    return [(row[0], row[1]) for row in rows]


def mark_queued(session: Session, ids: Sequence[int]) -> None:
    session.execute(
        update(InboxEvent)
        .where(InboxEvent.id.in_(ids), InboxEvent.status == InboxStatus.RECEIVED)
        .values(status=InboxStatus.QUEUED)
    )


def mark_for_replay(session: Session, ids: Sequence[int]) -> int:
    """Send events through processing again (parked ones, or any an operator picks)."""
    result = session.execute(
        update(InboxEvent)
        .where(InboxEvent.id.in_(ids))
        .values(
            status=InboxStatus.RECEIVED,
            replays=InboxEvent.replays + 1,
            attempts=0,
            last_error=None,
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def ids_with_status(session: Session, status: str, limit: int = 10_000) -> list[int]:
    return list(
        session.scalars(
            select(InboxEvent.id)
            .where(InboxEvent.status == status)
            .order_by(InboxEvent.id)
            .limit(limit)
        )
    )


def oldest_unprocessed_received_at(session: Session) -> datetime | None:
    return session.scalar(
        select(func.min(InboxEvent.received_at)).where(
            InboxEvent.status.in_((InboxStatus.RECEIVED, InboxStatus.QUEUED))
        )
    )


def body_of(session: Session, event_id: str, api_mode: str) -> bytes | None:
    """The raw body of the event with this envelope id in this mode."""
    return session.scalar(
        select(InboxEvent.body).where(
            InboxEvent.event_id == event_id, InboxEvent.api_mode == api_mode
        )
    )


def newest_of_org_connection(
    session: Session, query: Select[InboxEvent], org_connection_id: str, limit: int
) -> list[InboxEvent]:
    """``query``'s rows of one Fasten connection, newest first, at most ``limit``.

    ``ix_inbox_events_org_connection_id`` holds only rows past ``received`` (the webhook
    answer does not wait for it); the rows still ``received`` — the short backlog the
    dispatcher has not handed on yet — are found through ``ix_inbox_events_status_id``.
    The condition is the index's own SQL text, so both databases' planners can use it.
    """
    of_connection = query.where(InboxEvent.org_connection_id == org_connection_id)
    newest = InboxEvent.id.desc()
    handed_on = of_connection.where(text(HANDED_ON)).order_by(newest).limit(limit)
    waiting = (
        of_connection.where(InboxEvent.status == InboxStatus.RECEIVED).order_by(newest).limit(limit)
    )
    rows = [*session.scalars(handed_on), *session.scalars(waiting)]
    rows.sort(key=lambda row: row.id, reverse=True)
    return rows[:limit]
