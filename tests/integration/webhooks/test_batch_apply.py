"""The batch applier: many events per transaction, one failure never holds up the rest.

Both databases; the concurrent appliers are PostgreSQL's (SQLite has one writer at a time).
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, func, select

from ehi_bridge.alerts.models import Alert
from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.outbox.models import OutboxItem
from ehi_bridge.webhooks import schemas, service
from ehi_bridge.webhooks.models import InboxEvent
from ehi_bridge.webhooks.service import apply_batch
from tests.integration.webhooks.helpers import store
from tests.webhook_client import connection_success, envelope

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(_env_file=None, event_max_attempts=3)  # type: ignore[call-arg]


def drain(db: Database, settings: Settings, now: datetime, limit: int = 256) -> int:
    batches = 0
    while apply_batch(db, settings, limit=limit, now=now).claimed:
        batches += 1
    return batches


def statuses(db: Database) -> dict[str, int]:
    with db.read_session() as session:
        rows = session.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status))
        return {status: int(count) for status, count in rows}


def success(conn: str, at: datetime, status: str = "authorized") -> dict[str, Any]:
    data = connection_success(conn, connection_status=status)
    return envelope("patient.connection_success", data, date=at)


def export_success(conn: str, task: str, at: datetime) -> dict[str, Any]:
    data = {
        "org_connection_id": conn,
        "task_id": task,
        "download_links": [{"url": "https://api.example/x.jsonl", "export_type": "jsonl"}],
        "stats": {"total_resources": 3},
    }
    return envelope("patient.ehi_export_success", data, date=at)


def revoked(conn: str, at: datetime) -> dict[str, Any]:
    data = {"org_connection_id": conn, "connection_status": "revoked"}
    return envelope("patient.authorization_revoked", data, date=at)


def test_a_poison_event_backs_off_and_parks_while_a_thousand_flow(db: Database) -> None:
    poison = envelope("patient.ehi_export_failed", {"org_connection_id": ["not", "a", "string"]})
    tests = [envelope("webhook.test", {"hello": "world", "n": n}) for n in range(1000)]
    store(db, [*tests[:500], poison, *tests[500:]])

    drain(db, SETTINGS, T0)
    assert statuses(db) == {"applied": 1000, "retry": 1}
    for attempt in (1, 2):  # not due before its backoff, due after it
        assert apply_batch(db, SETTINGS, now=T0 + timedelta(seconds=0.5)).claimed == 0
        assert apply_batch(db, SETTINGS, now=T0 + timedelta(seconds=2**attempt)).claimed == 1
    assert statuses(db) == {"applied": 1000, "parked": 1}
    with db.read_session() as session:
        assert session.scalar(select(func.max(InboxEvent.apply_count))) == 1
        assert [a.kind for a in session.scalars(select(Alert))] == ["event_parked"]


def test_a_row_whose_write_fails_alone_is_retried_and_its_batch_commits(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = envelope("webhook.test", {"hello": "world"})
    real = service._APPLIERS[schemas.WEBHOOK_TEST]

    def fail_for_one(ctx: Any, row: Any, data: Any, at: datetime) -> None:
        if row.event_id == broken["id"]:
            ctx.session.execute(select(func.count()).select_from(Connection))  # a write began
            raise RuntimeError("injected")
        real(ctx, row, data, at)

    monkeypatch.setitem(service._APPLIERS, schemas.WEBHOOK_TEST, fail_for_one)
    store(db, [success("c-before", T0), broken, success("c-after", T0)])
    result = apply_batch(db, SETTINGS, now=T0)
    assert len(result.applied) == 2
    assert [(f.attempts, f.error) for f in result.failures] == [(1, "RuntimeError")]
    with db.read_session() as session:
        connections = session.scalars(select(Connection.org_connection_id)).all()
        assert sorted(connections) == ["c-after", "c-before"]
        assert len(session.scalars(select(Export)).all()) == 2
        assert len(session.scalars(select(OutboxItem)).all()) == 2  # one request each
    assert statuses(db) == {"applied": 2, "retry": 1}


@pytest.mark.postgres
def test_two_appliers_share_a_backlog_of_shared_connections(pg_database_url: str) -> None:
    """Events for the same forty connections, claimed by two appliers in small batches."""
    connections = [f"shared-{n}" for n in range(40)]
    events: list[dict[str, Any]] = []
    for round_ in range(3):
        for n, conn in enumerate(connections):
            at = T0 + timedelta(minutes=round_)
            events.append(success(conn, at))
            events.append(export_success(conn, f"task-{n}", at + timedelta(seconds=30)))
            events.append(envelope("webhook.test", {"hello": "world"}))
    dbs = [Database(pg_database_url) for _ in range(2)]
    try:
        store(dbs[0], events)
        errors: list[BaseException] = []

        def run(db: Database) -> None:
            try:
                drain(db, SETTINGS, utcnow(), limit=7)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(db,)) for db in dbs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        assert not any(t.is_alive() for t in threads), "an applier is stuck (deadlock?)"
        assert errors == []
        with dbs[0].read_session() as session:
            counts = session.execute(
                select(InboxEvent.apply_count, InboxEvent.attempts, func.count()).group_by(
                    InboxEvent.apply_count, InboxEvent.attempts
                )
            ).all()
            assert [tuple(row) for row in counts] == [(1, 0, len(events))]
            exports = session.scalars(select(Export)).all()
            assert len(exports) == len(connections)  # one per connection, whoever applied
            workflow_ids = session.scalars(select(OutboxItem.workflow_id)).all()
            # Each export is asked for once if we created it (an export announced by its
            # webhook before the connection's success was not ours to ask for) and
            # downloaded once.
            asked = [f"export-{e.id}" for e in exports if e.trigger == "auto"]
            downloaded = [f"ingest-{e.id}-webhook" for e in exports]
            assert sorted(workflow_ids) == sorted(asked + downloaded)
    finally:
        for db in dbs:
            db.dispose()


def _final_state(db: Database, conn: str) -> tuple[str, set[str]]:
    """The connection's status and the statuses its exports ended in (an export announced
    after the revocation gets its own row, recorded as cancelled)."""
    with db.read_session() as session:
        connection = session.scalars(
            select(Connection).where(Connection.org_connection_id == conn)
        ).one()
        exports = session.scalars(
            select(Export.status).where(Export.connection_id == connection.id)
        ).all()
        return connection.status, set(exports)


LIFECYCLE = ("success", "export", "revoked", "success-repeat", "export-repeat")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(order=st.permutations(LIFECYCLE), batch=st.integers(min_value=1, max_value=5))
def test_any_order_and_batching_of_one_connections_events_ends_the_same(
    db: Database, order: list[str], batch: int
) -> None:
    conn = f"prop-{uuid.uuid4().hex[:12]}"
    make = {
        "success": lambda: success(conn, T0),
        "success-repeat": lambda: success(conn, T0),
        "export": lambda: export_success(conn, f"task-{conn}", T0 + timedelta(minutes=1)),
        "export-repeat": lambda: export_success(conn, f"task-{conn}", T0 + timedelta(minutes=1)),
        "revoked": lambda: revoked(conn, T0 + timedelta(minutes=2)),
    }
    for name in order:
        store(db, [make[name]()])
        if batch == 1:
            drain(db, SETTINGS, T0 + timedelta(hours=1), limit=1)
    drain(db, SETTINGS, T0 + timedelta(hours=1), limit=batch)
    assert _final_state(db, conn) == ("revoked", {"cancelled"})


def test_before_write_runs_after_the_read_and_before_the_write_transaction(db: Database) -> None:
    """The applier's pause for a busy receiver is taken right before the write (its read
    and validation of the batch already done); the end of the write is reported."""
    store(db, [success(f"conn-{uuid.uuid4().hex[:8]}", T0) for _ in range(5)])
    seen: list[dict[str, int]] = []
    result = apply_batch(
        db, SETTINGS, limit=10, now=T0, before_write=lambda: seen.append(statuses(db))
    )
    assert seen == [{"received": 5}]  # called once, nothing written yet
    assert len(result.applied) == 5 and statuses(db) == {"applied": 5}
    # When the write ended (SQLite: the gate's release), from which the next pause counts.
    assert result.write_ended_at is not None and result.transaction_seconds > 0


def test_a_new_connection_is_written_once(db: Database) -> None:
    """Not inserted ``pending`` and updated after (every index of the row written twice):
    one INSERT of the complete rows, no UPDATE of connections, on both databases."""
    store(db, [success(f"once-{n}", T0) for n in range(20)])
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()).lower())

    # Every engine: on SQLite the applier writes through the database's hot-path engine.
    event.listen(Engine, "before_cursor_execute", record)
    try:
        assert len(apply_batch(db, SETTINGS, limit=50, now=T0).applied) == 20
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert len([s for s in statements if s.startswith("insert into connections")]) == 1
    assert not [s for s in statements if s.startswith("update connections")]
    with db.read_session() as session:
        stored = session.scalars(
            select(Connection).where(Connection.org_connection_id.like("once-%"))
        )
        assert {c.status for c in stored} == {"authorized"}
