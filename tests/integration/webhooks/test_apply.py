"""Applying stored events: repeats and every order end in the right states."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from ehi_bridge.alerts.models import Alert
from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.connections.service import record_widget_complete
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.outbox.models import OutboxItem, OutboxKind
from ehi_bridge.records.models import Resource
from ehi_bridge.webhooks.models import InboxEvent
from ehi_bridge.webhooks.service import (
    BatchResult,
    apply_batch,
    reauthorize_if_confirmed,
    replay_events,
)
from tests.webhook_client import connection_success, envelope

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]


def store(db: Database, event: dict[str, Any]) -> int:
    org_connection_id = (event.get("data") or {}).get("org_connection_id")
    with db.session() as session:
        row = InboxEvent(
            event_id=event["id"],
            webhook_id=event["id"],
            event_type=event["type"],
            api_mode=event["api_mode"],
            body=orjson.dumps(event),
            received_at=utcnow(),
            last_received_at=utcnow(),
            delivery_count=1,
            status="received",
            org_connection_id=org_connection_id if isinstance(org_connection_id, str) else None,
            attempts=0,
            apply_count=0,
            replays=0,
        )
        session.add(row)
        session.flush()
        return row.id


def apply(db: Database) -> BatchResult:
    return apply_batch(db, SETTINGS)


def deliver(db: Database, event: dict[str, Any]) -> BatchResult:
    store(db, event)
    return apply(db)


def kinds(result: BatchResult, kind: str) -> list[str]:
    return [f.subject for f in result.follow_ups if f.kind == kind]


def requests_written(db: Database) -> list[str]:
    with db.read_session() as session:
        return list(
            session.scalars(
                select(OutboxItem.subject)
                .where(OutboxItem.kind == OutboxKind.REQUEST_EXPORT)
                .order_by(OutboxItem.id)
            )
        )


def success(conn: str, at: datetime, status: str = "authorized") -> dict[str, Any]:
    return envelope(
        "patient.connection_success", connection_success(conn, connection_status=status), date=at
    )


def export_success(conn: str, task: str, at: datetime) -> dict[str, Any]:
    return envelope(
        "patient.ehi_export_success",
        {
            "org_connection_id": conn,
            "task_id": task,
            "org_id": "org-1",
            "download_links": [{"url": "https://api.example/x.jsonl", "export_type": "jsonl"}],
            "stats": {"total_resources": 3, "total_by_resource_type": {"Patient": 1}},
        },
        date=at,
    )


def revoked(conn: str, at: datetime) -> dict[str, Any]:
    return envelope(
        "patient.authorization_revoked",
        {"org_connection_id": conn, "platform_type": "epic", "connection_status": "revoked"},
        date=at,
    )


def connection(db: Database, org_id: str) -> Connection:
    with db.read_session() as session:
        return session.scalars(
            select(Connection).where(Connection.org_connection_id == org_id)
        ).one()


def exports(db: Database) -> list[Export]:
    with db.read_session() as session:
        return list(session.scalars(select(Export).order_by(Export.id)))


def test_success_requests_one_export_and_repeat_changes_nothing(db: Database) -> None:
    event = success("c1", T0)
    deliver(db, event)
    assert requests_written(db) == [str(exports(db)[0].id)]
    inbox_id = store(db, {**success("c1", T0 + timedelta(seconds=1))})
    assert apply(db).applied == [inbox_id]
    assert apply(db).claimed == 0  # the same row is not claimed again
    assert len(requests_written(db)) == 1
    assert connection(db, "c1").status == "authorized"
    assert [e.status for e in exports(db)] == ["requested"]
    with db.read_session() as session:
        assert session.get(InboxEvent, inbox_id).apply_count == 1  # type: ignore[union-attr]


def test_revocation_before_success_ends_revoked_without_export(db: Database) -> None:
    deliver(db, revoked("c2", T0 + timedelta(minutes=5)))
    follow = deliver(db, success("c2", T0 + timedelta(minutes=10)))  # re-dated retry
    assert requests_written(db) == []
    assert kinds(follow, OutboxKind.VERIFY_CONNECTION) == [connection(db, "c2").id]
    assert connection(db, "c2").status == "revoked"
    assert exports(db) == []


def test_export_success_before_connection_success(db: Database) -> None:
    follow = deliver(db, export_success("c3", "task-3", T0 + timedelta(minutes=2)))
    assert len(kinds(follow, OutboxKind.INGEST_EXPORT)) == 1
    deliver(db, success("c3", T0))
    assert requests_written(db) == []
    (export,) = exports(db)
    assert (export.status, export.task_id, export.stats_total) == ("downloading", "task-3", 3)
    assert connection(db, "c3").status == "authorized"


def test_export_success_twice_downloads_once(db: Database) -> None:
    deliver(db, success("c4", T0))
    first = deliver(db, export_success("c4", "task-4", T0 + timedelta(minutes=1)))
    again = deliver(db, export_success("c4", "task-4", T0 + timedelta(minutes=2)))
    assert len(kinds(first, OutboxKind.INGEST_EXPORT)) == 1
    assert kinds(again, OutboxKind.INGEST_EXPORT) == []
    (export,) = exports(db)  # the requested export took the task id
    assert export.status == "downloading"
    assert export.file_expires_at == T0 + timedelta(minutes=1, hours=24)


def test_success_after_timeout_is_processed(db: Database) -> None:
    deliver(db, success("c5", T0))
    with db.session() as session:
        export = session.scalars(select(Export)).one()
        export.status, export.task_id = "timed_out", "task-5"
    follow = deliver(db, export_success("c5", "task-5", T0 + timedelta(hours=2)))
    assert len(kinds(follow, OutboxKind.INGEST_EXPORT)) == 1
    assert exports(db)[0].status == "downloading"


def test_export_failed_records_reason_and_alerts(db: Database) -> None:
    deliver(db, success("c6", T0))
    failed = envelope(
        "patient.ehi_export_failed",
        {"org_connection_id": "c6", "task_id": "task-6", "failure_reason": "token_refresh_failure"},
        date=T0 + timedelta(minutes=1),
    )
    deliver(db, failed)
    (export,) = exports(db)
    assert (export.status, export.failure_reason) == ("failed", "token_refresh_failure")
    with db.read_session() as session:
        (alert,) = session.scalars(select(Alert)).all()
    assert alert.kind == "export_failed"
    assert "token_refresh_failure" in alert.message


def test_revocation_cancels_exports_and_marks_records(db: Database) -> None:
    deliver(db, success("c7", T0))
    conn = connection(db, "c7")
    with db.session() as session:
        session.add(
            Resource(
                connection_id=conn.id,
                resource_type="Patient",
                resource_id="p1",
                raw=b"{}",
                content_hash=b"0" * 32,
                version=1,
                ingested_at=utcnow(),
            )
        )
    follow = deliver(db, revoked("c7", T0 + timedelta(hours=1)))
    assert kinds(follow, OutboxKind.CANCEL_EXPORT) == [str(exports(db)[0].id)]
    assert exports(db)[0].status == "cancelled"
    with db.read_session() as session:
        assert session.scalars(select(Resource.revoked)).all() == [True]


@pytest.mark.parametrize(
    "order", list(itertools.permutations(range(3))), ids=lambda o: "-".join(map(str, o))
)
def test_any_order_of_connect_export_revoke_ends_revoked_and_cancelled(
    db: Database, order: tuple[int, ...]
) -> None:
    events = [
        success("c8", T0),
        export_success("c8", "task-8", T0 + timedelta(minutes=1)),
        revoked("c8", T0 + timedelta(minutes=2)),
    ]
    for index in order:
        deliver(db, events[index])
    assert connection(db, "c8").status == "revoked"
    assert {e.status for e in exports(db)} == {"cancelled"}


def test_unknown_type_is_stored_and_ignored(db: Database) -> None:
    inbox_id = store(db, envelope("patient.request_support", {"message": "help"}))
    result = apply(db)
    assert (result.ignored, result.follow_ups) == ([inbox_id], [])
    with db.read_session() as session:
        assert session.get(InboxEvent, inbox_id).status == "ignored"  # type: ignore[union-attr]


def test_reauthorization_needs_fasten_confirmation(db: Database) -> None:
    deliver(db, success("c10", T0))
    deliver(db, revoked("c10", T0 + timedelta(minutes=1)))
    conn_id = connection(db, "c10").id
    assert reauthorize_if_confirmed(db, SETTINGS, conn_id, "revoked") is None
    assert connection(db, "c10").status == "revoked"
    new_export = reauthorize_if_confirmed(db, SETTINGS, conn_id, "authorized")
    assert new_export is not None
    assert connection(db, "c10").status == "authorized"
    assert [e.status for e in exports(db)] == ["cancelled", "requested"]


def test_tefca_event_without_ids_is_applied_without_a_connection(db: Database) -> None:
    event = envelope("patient.connection_success", {"connection_status": "authorized"})
    deliver(db, event)
    with db.read_session() as session:
        assert session.scalars(select(Connection)).all() == []
        assert session.scalars(select(InboxEvent.status)).one() == "applied"


def test_invalid_payload_is_retried_then_parked_with_an_alert(db: Database) -> None:
    event = envelope("patient.ehi_export_failed", {"org_connection_id": ["not", "a", "string"]})
    inbox_id = store(db, event)
    settings = Settings(_env_file=None, event_max_attempts=2)  # type: ignore[call-arg]
    first = apply_batch(db, settings, now=T0)
    assert first.applied == [] and first.parked == []
    assert first.failures[0].next_attempt_at == T0 + timedelta(seconds=1)
    assert apply_batch(db, settings, now=T0).claimed == 0  # not due yet
    second = apply_batch(db, settings, now=T0 + timedelta(seconds=1))
    assert second.parked == [inbox_id]
    with db.read_session() as session:
        row = session.get(InboxEvent, inbox_id)
        assert row is not None and (row.status, row.attempts) == ("parked", 2)
        assert "does not validate" in (row.last_error or "")
        assert [a.kind for a in session.scalars(select(Alert))] == ["event_parked"]


def test_replay_runs_an_event_again(db: Database) -> None:
    inbox_id = store(db, success("c9", T0))
    apply(db)
    assert replay_events(db, [inbox_id]) == 1
    assert apply(db).applied == [inbox_id]
    with db.read_session() as session:
        row = session.get(InboxEvent, inbox_id)
        assert row is not None and (row.apply_count, row.replays) == (2, 1)
    assert len(exports(db)) == 1  # the effects stay idempotent


def test_unknown_failure_reason_is_not_copied_into_the_alert(db: Database) -> None:
    deliver(db, success("c6x", T0))
    text = "call +1-555-0100 about patient Jane Doe " + "x" * 200
    failed = envelope(
        "patient.ehi_export_failed",
        {"org_connection_id": "c6x", "task_id": "task-6x", "failure_reason": text},
        date=T0 + timedelta(minutes=1),
    )
    deliver(db, failed)
    (export,) = exports(db)
    assert (export.status, export.failure_reason) == ("failed", "other")
    with db.read_session() as session:
        (alert,) = session.scalars(select(Alert)).all()
    assert "Jane" not in alert.message
    assert alert.context["failure_reason"] == "other"


def test_success_naming_another_patient_than_the_link_is_parked_and_alerted(
    db: Database,
) -> None:
    """Patient A's link recorded connection X; Fasten's signed success names patient B."""
    with db.session() as session:
        record_widget_complete(
            session, {"org_connection_id": "X", "external_id": "patient-A"}, "test"
        )
    event = success("X", T0)
    event["data"]["external_id"] = "patient-B"
    inbox_id = store(db, event)
    result = apply(db)
    assert result.parked == [inbox_id] and result.follow_ups == []
    conn = connection(db, "X")
    assert (conn.external_id, conn.status) == ("patient-A", "pending")
    with db.read_session() as session:
        (alert,) = session.scalars(select(Alert)).all()
    assert alert.kind == "ownership_conflict"
    assert "patient-B" not in alert.message
    with db.read_session() as session:
        row = session.get(InboxEvent, inbox_id)
        assert row is not None
        assert row.status == "parked"
        assert row.last_error is not None and "ownership conflict" in row.last_error
    # The link's patient is kept; nothing was requested for either patient.
    assert exports(db) == []
