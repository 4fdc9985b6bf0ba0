"""Background processing in the real server: bulk revocation, parking, replay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.webhooks.models import InboxEvent
from ehi_bridge.webhooks.service import replay_events
from tests.e2e.conftest import ServerFactory
from tests.e2e.webhooks.test_delivery import post_all, wait_until
from tests.webhook_client import connection_success, envelope, signed

T0 = datetime.now(UTC) - timedelta(hours=1)


def _statuses(db: Database) -> dict[str, int]:
    with db.read_session() as session:
        return {
            status: count
            for status, count in session.execute(
                select(Connection.status, func.count()).group_by(Connection.status)
            )
        }


def test_bulk_revocation_of_500_connections_is_applied_completely(
    service_env: dict[str, str], start_service: ServerFactory, db: Database
) -> None:
    env = {**service_env, "EHI_AUTO_REQUEST_EXPORT": "false"}
    ids = [f"bulk-{i}" for i in range(500)]
    connects = [
        signed(envelope("patient.connection_success", connection_success(c), date=T0)) for c in ids
    ]
    revocations = [
        signed(
            envelope(
                "patient.authorization_revoked",
                {"org_connection_id": c, "platform_type": "epic", "connection_status": "revoked"},
                date=T0 + timedelta(minutes=5),
            )
        )
        for c in ids
    ]
    with start_service(env) as (_proc, base):
        assert asyncio.run(post_all(base, connects)) == [200] * 500
        # the bulk revocation arrives while the connects may still be being applied
        assert asyncio.run(post_all(base, revocations)) == [200] * 500
        wait_until(lambda: _statuses(db) == {"revoked": 500}, timeout=180)


def test_failing_event_is_parked_without_blocking_others_and_can_be_replayed(
    service_env: dict[str, str], start_service: ServerFactory, db: Database
) -> None:
    env = {**service_env, "EHI_AUTO_REQUEST_EXPORT": "false", "EHI_EVENT_MAX_ATTEMPTS": "3"}
    poison = envelope("patient.ehi_export_failed", {"org_connection_id": {"not": "a string"}})
    good = envelope("patient.connection_success", connection_success("fine-1"))

    def status(event_id: str) -> tuple[str, int, int]:
        with db.read_session() as session:
            row = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event_id)).one()
            return row.status, row.attempts, row.replays

    with start_service(env) as (_proc, base):
        assert asyncio.run(post_all(base, [signed(poison), signed(good)])) == [200, 200]
        wait_until(lambda: status(good["id"])[0] == "applied")
        wait_until(lambda: status(poison["id"])[0] == "parked")
        assert status(poison["id"]) == ("parked", 3, 0)
        with db.read_session() as session:
            inbox_id = session.scalars(
                select(InboxEvent.id).where(InboxEvent.event_id == poison["id"])
            ).one()
        assert replay_events(db, [inbox_id]) == 1
        wait_until(lambda: status(poison["id"]) == ("parked", 3, 1))
