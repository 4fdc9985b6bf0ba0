"""Read-only queries behind /readyz and /metrics."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from ehi_bridge.exports import repository as exports_repo
from ehi_bridge.exports.models import Export
from ehi_bridge.webhooks.models import InboxEvent, InboxStatus

UNPROCESSED = InboxStatus.UNPROCESSED


def ping(session: Session) -> None:
    session.execute(text("SELECT 1"))


def oldest_unprocessed_at(session: Session) -> datetime | None:
    """``received_at`` of the oldest event still received or waiting to retry (one indexed probe per
    status on ``(status, id)``; ids grow with arrival)."""
    oldest: datetime | None = None
    for status in UNPROCESSED:
        at = session.scalars(
            select(InboxEvent.received_at)
            .where(InboxEvent.status == status)
            .order_by(InboxEvent.id)
            .limit(1)
        ).first()
        if at is not None and (oldest is None or at < oldest):
            oldest = at
    return oldest


def stalled_exports(session: Session, now: datetime, quiet_for: timedelta) -> int:
    return len(exports_repo.stalled(session, now, quiet_for, limit=10_000))


def exports_count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Export.status, func.count()).group_by(Export.status))
    return {status: int(count) for status, count in rows}
