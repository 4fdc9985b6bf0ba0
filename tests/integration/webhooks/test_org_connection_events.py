"""A connection's events: the index on ``org_connection_id`` is filled when events are
handed on, not by the webhook answer, and every query still finds the rows not handed on yet
(SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import select

from ehi_bridge.api import repository as api_repo
from ehi_bridge.config import Settings
from ehi_bridge.dashboard import repository as dashboard_repo
from ehi_bridge.db.engine import Database
from ehi_bridge.webhooks.inbox import Delivery, InboxWriter
from ehi_bridge.webhooks.models import InboxEvent, InboxStatus
from ehi_bridge.webhooks.service import apply_batch
from tests.integration.api.factories import make_event

INDEX = "ix_inbox_events_org_connection_id"


def _index_entries(db: Database) -> int:
    """Entries in the index itself, read from each database's own bookkeeping."""
    if db.is_sqlite:
        with db.engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT coalesce(sum(ncell), 0) FROM dbstat "
                    f"WHERE name = '{INDEX}' AND pagetype = 'leaf'"
                ).scalar_one()
            )
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM inbox_events")  # counts every index's tuples exactly
        return int(
            conn.exec_driver_sql(
                f"SELECT reltuples FROM pg_class WHERE relname = '{INDEX}'"
            ).scalar_one()
        )


def _deliveries(org_connection_id: str, count: int) -> list[Delivery]:
    return [
        Delivery(
            event_id=uuid.uuid4().hex,
            webhook_id=f"msg_{uuid.uuid4().hex}",
            event_type="patient.connection_success",
            api_mode="test",
            body=b'{"id":"x"}',
            org_connection_id=org_connection_id,
        )
        for _ in range(count)
    ]


async def _submit(writer: InboxWriter, deliveries: list[Delivery]) -> None:
    await asyncio.gather(*(writer.submit(delivery) for delivery in deliveries))


def test_answered_deliveries_enter_the_index_only_when_handed_on(db: Database) -> None:
    writer = InboxWriter(db)
    writer.start()
    try:
        asyncio.run(_submit(writer, _deliveries("org-a", 40)))
    finally:
        writer.stop()
    assert _index_entries(db) == 0

    assert apply_batch(db, Settings(_env_file=None), limit=25).claimed == 25  # type: ignore[call-arg]
    assert _index_entries(db) == 25
    with db.read_session() as session:
        found = api_repo.timeline(session, "org-a")
    assert len(found) == 40


def _seed(db: Database) -> list[int]:
    """Events of org-a (newest last) in every status, interleaved with org-b's; org-a's ids."""
    statuses = [InboxStatus.APPLIED, InboxStatus.RECEIVED, InboxStatus.RETRY]
    statuses += [InboxStatus.PARKED, InboxStatus.RECEIVED, InboxStatus.IGNORED]
    mine = []
    with db.session() as session:
        for n, status in enumerate(statuses * 2):
            mine.append(make_event(session, n, org_connection_id="org-a", status=status).id)
            make_event(session, n, org_connection_id="org-b", status=status)
    return mine


def test_every_query_of_a_connection_finds_its_events_in_any_status(db: Database) -> None:
    mine = _seed(db)
    newest_first = sorted(mine, reverse=True)
    with db.read_session() as session:
        assert [e.id for e in api_repo.timeline(session, "org-a")] == newest_first
        events = dashboard_repo.connection_events(session, "org-a", limit=5)
        assert [e.id for e in events] == newest_first[:5]

        pages: list[int] = []
        before: int | None = None
        while True:
            rows, before = dashboard_repo.list_events(
                session, dashboard_repo.EventFilter(org_connection_id="org-a"), before, limit=5
            )
            pages += [e.id for e in rows]
            if before is None:
                break
        assert pages == newest_first

        received_only = dashboard_repo.EventFilter(
            org_connection_id="org-a", status=InboxStatus.RECEIVED
        )
        rows, _ = dashboard_repo.list_events(session, received_only, None, limit=50)
        statuses = session.scalars(select(InboxEvent.status).where(InboxEvent.id.in_(mine)))
        assert len(rows) == list(statuses).count(InboxStatus.RECEIVED) == 4
