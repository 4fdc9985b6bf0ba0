"""Queries and writes of the inbox. All SQL for this table lives here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    Table,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from ehi_bridge.db.bulk import ListStatement
from ehi_bridge.db.plans import prefer_index_plans
from ehi_bridge.webhooks.models import HANDED_ON, InboxEvent, InboxStatus


def get(session: Session, inbox_id: int, *, for_update: bool = False) -> InboxEvent | None:
    return session.get(InboxEvent, inbox_id, with_for_update=for_update or None)


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An inbox row claimed for applying: what the appliers read, nothing they write."""

    id: int
    event_id: str
    event_type: str
    api_mode: str
    body: bytes
    received_at: datetime
    org_connection_id: str | None
    attempts: int
    replays: int


# The applier's statements are Core (table columns): the ORM's statement handling (and an
# ORM UPDATE's session synchronisation) cost as much as the SQL, inside SQLite's write lock.
INBOX = cast(Table, InboxEvent.__table__)
_PENDING_COLUMNS = tuple(
    INBOX.c[name]
    for name in (
        "id",
        "event_id",
        "event_type",
        "api_mode",
        "body",
        "received_at",
        "org_connection_id",
        "attempts",
        "replays",
    )
)


def _due(
    now: datetime | BindParameter[datetime],
) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """What is due to apply: new rows, and retries whose time has come. Two conditions, each
    queried on its own, so each is answered from its index."""
    new = INBOX.c.status == InboxStatus.RECEIVED
    retry = (INBOX.c.status == InboxStatus.RETRY) & (INBOX.c.next_attempt_at <= now)
    return new, retry


# Built once, with their ids and time as parameters: the applier runs them for every batch,
# inside SQLite's write gate.
_IDS: BindParameter[int] = bindparam("ids", expanding=True)
_NOW: BindParameter[datetime] = bindparam("now", type_=INBOX.c.applied_at.type)
_STILL_DUE = ListStatement(select(INBOX.c.id).where(INBOX.c.id.in_(_IDS), or_(*_due(_NOW))), "ids")
_FINISH_APPLIED = ListStatement(
    update(INBOX)
    .where(INBOX.c.id.in_(_IDS))
    .values(
        status=InboxStatus.APPLIED,
        apply_count=INBOX.c.apply_count + 1,
        applied_at=_NOW,
        last_error=None,
        next_attempt_at=None,
    ),
    "ids",
)
_FINISH_IGNORED = ListStatement(
    update(INBOX)
    .where(INBOX.c.id.in_(_IDS))
    .values(
        status=InboxStatus.IGNORED,
        applied_at=_NOW,
        next_attempt_at=None,
    ),
    "ids",
)


def claim_due(session: Session, now: datetime, limit: int) -> list[PendingEvent]:
    """Up to ``limit`` rows to apply now, oldest first: new ones and retries that are due.

    On PostgreSQL the rows are locked ``FOR UPDATE SKIP LOCKED``: appliers in other
    processes take the rows after them instead of waiting or applying them twice. On
    SQLite the write transaction (``BEGIN IMMEDIATE``) already excludes other writers.
    """
    prefer_index_plans(session)
    rows = [
        row
        for condition in _due(now)
        for row in session.execute(
            select(*_PENDING_COLUMNS)
            .where(condition)
            .order_by(INBOX.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ]
    rows.sort(key=lambda row: row[0])
    return [PendingEvent(*row) for row in rows[:limit]]


def still_due(session: Session, ids: Sequence[int], now: datetime) -> set[int]:
    """Which of ``ids`` are still due (read again inside the write transaction)."""
    return {row[0] for row in _STILL_DUE.execute(session.connection(), ids, {"now": now})}


def finish(
    session: Session, *, applied: Sequence[int], ignored: Sequence[int], now: datetime
) -> None:
    """Mark claimed rows done, one statement per outcome."""
    if applied:
        _FINISH_APPLIED.execute(session.connection(), applied, {"now": now})
    if ignored:
        _FINISH_IGNORED.execute(session.connection(), ignored, {"now": now})


@dataclass(frozen=True, slots=True)
class Failure:
    inbox_id: int
    attempts: int
    error: str
    next_attempt_at: datetime | None  # None: parked


def record_failures(session: Session, failures: Sequence[Failure]) -> None:
    for failure in failures:
        session.execute(
            update(InboxEvent)
            .where(InboxEvent.id == failure.inbox_id)
            .values(
                status=InboxStatus.RETRY if failure.next_attempt_at else InboxStatus.PARKED,
                attempts=failure.attempts,
                last_error=failure.error[:500],
                next_attempt_at=failure.next_attempt_at,
            )
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
            next_attempt_at=None,
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
            InboxEvent.status.in_(InboxStatus.UNPROCESSED)
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


def newest_id(session: Session) -> int | None:
    """The id of the newest inbox row (new rows mean deliveries are arriving)."""
    newest: int | None = session.scalar(select(func.max(INBOX.c.id)))
    return newest


def any_due(session: Session, now: datetime) -> bool:
    """Whether anything waits to be applied (a read: the applier's cheap idle check)."""
    prefer_index_plans(session)
    return any(
        session.scalar(select(INBOX.c.id).where(condition).limit(1)) is not None
        for condition in _due(now)
    )
