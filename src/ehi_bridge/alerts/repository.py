"""Rows of ``alerts``: one per dedup key, with its occurrence count and delivery state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ehi_bridge.alerts.models import Alert


def get_by_key(session: Session, dedup_key: str, for_update: bool = False) -> Alert | None:
    query = select(Alert).where(Alert.dedup_key == dedup_key)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).first()


def record_occurrence(
    session: Session,
    *,
    kind: str,
    dedup_key: str,
    severity: str,
    message: str,
    context: Mapping[str, str | int],
    now: datetime,
) -> tuple[Alert, bool, datetime | None]:
    """Insert the alert or count one more occurrence of it.

    Returns (row, created, previous ``last_at``). Two writers racing on a new key: the
    loser's insert fails inside a savepoint and it counts an occurrence instead.
    """
    existing = get_by_key(session, dedup_key, for_update=True)
    if existing is None:
        row = Alert(
            kind=kind,
            dedup_key=dedup_key,
            severity=severity,
            message=message,
            context=dict(context),
            count=1,
            first_at=now,
            last_at=now,
        )
        try:
            with session.begin_nested():
                session.add(row)
            return row, True, None
        except IntegrityError:
            existing = get_by_key(session, dedup_key, for_update=True)
            if existing is None:  # pragma: no cover - the winner's row must be visible
                raise
    previous = existing.last_at
    existing.count += 1
    existing.last_at = max(now, previous)
    existing.kind = kind
    existing.severity = severity
    existing.message = message
    existing.context = dict(context)
    return existing, False, previous


def record_delivery(
    session: Session, alert_id: int, delivered_at: datetime | None, error: str | None
) -> None:
    """Store the outcome of sending to the sinks (``delivered_at`` only on success)."""
    row = session.get(Alert, alert_id)
    if row is None:
        return
    if delivered_at is not None:
        row.delivered_at = delivered_at
    row.delivery_error = error


def recent(session: Session, limit: int = 50, kind: str | None = None) -> Sequence[Alert]:
    query = select(Alert).order_by(Alert.last_at.desc(), Alert.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(Alert.kind == kind)
    return session.scalars(query).all()
