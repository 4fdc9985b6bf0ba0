"""Planner settings for the background work's queue-like statements (PostgreSQL)."""

from __future__ import annotations

from typing import Final

from sqlalchemy import text
from sqlalchemy.orm import Session

_INDEX_PLANS: Final = text(
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_sort', 'off', true)"
)


def prefer_index_plans(session: Session) -> None:
    """PostgreSQL: for the rest of this transaction, plan with the indexes whatever the
    tables' statistics say (a no-op on SQLite, whose planner has no such statistics).

    For the statements that take work off a backlog: the oldest due inbox rows, the
    connections a batch of events touches, the outbox rows to start. Each is an index
    lookup by design, on a table that grows by thousands of rows a second during an
    onboarding, faster than autovacuum analyzes it. Planned on stale statistics they became a
    sort of the whole backlog and a sequential scan comparing every connection with each id
    of a batch: the applier fell from ~10,000 to ~2,500 events/s within seconds of starting
    on a 100k backlog (docs/benchmarks.md)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_INDEX_PLANS)
