"""Patient records in, end to end: ehi-bridge and the Fasten simulator over loopback HTTP."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from ehi_bridge.alerts.models import Alert
from ehi_bridge.connections.models import Connection
from ehi_bridge.exports.models import Export
from ehi_bridge.records.models import IngestError, Resource
from ehi_bridge.webhooks.models import InboxEvent
from tests.e2e.conftest import LiveStack
from tests.support import ehi_command, running

pytestmark = pytest.mark.slow


def wait_for(predicate: Callable[[], Any], timeout: float = 120.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what or predicate.__name__}")


def export_of(stack: LiveStack, org_connection_id: str) -> Export | None:
    with stack.db.read_session() as session:
        return session.scalars(
            select(Export)
            .join(Connection, Connection.id == Export.connection_id)
            .where(Connection.org_connection_id == org_connection_id)
            .order_by(Export.id.desc())
        ).first()


def finished(
    stack: LiveStack, org_connection_id: str, statuses: tuple[str, ...]
) -> Callable[[], Any]:
    def check() -> Export | None:
        export = export_of(stack, org_connection_id)
        return export if export is not None and export.status in statuses else None

    return check


def stored_lines(stack: LiveStack, org_connection_id: str) -> list[bytes]:
    with stack.db.read_session() as session:
        return list(
            session.scalars(
                select(Resource.raw)
                .join(Connection, Connection.id == Resource.connection_id)
                .where(Connection.org_connection_id == org_connection_id)
            )
        )


def sim_file_lines(stack: LiveStack, org_connection_id: str) -> list[bytes]:
    exports = [e for e in stack.sim.sim.list_exports() if e.org_connection_id == org_connection_id]
    return [line.rstrip(b"\r\n") for line in exports[-1].file.lines() if line.strip()]


def test_connected_patients_records_land_byte_identical(live_stack: LiveStack) -> None:
    stack = live_stack
    connections = [
        stack.sim.sim.connect(external_id=f"user-{i}", patient_index=i) for i in range(3)
    ]
    for conn in connections:
        export = wait_for(finished(stack, conn.org_connection_id, ("complete", "partial")))
        sim_export = next(
            e for e in stack.sim.sim.list_exports() if e.org_connection_id == conn.org_connection_id
        )
        stats = sim_export.file.stats
        assert export.status == "complete"
        assert export.stats_total == stats.total_resources == export.ingested_total
        assert sorted(stored_lines(stack, conn.org_connection_id)) == sorted(
            sim_file_lines(stack, conn.org_connection_id)
        )
        with stack.db.read_session() as session:
            by_type = dict(
                session.execute(
                    select(Resource.resource_type, func.count())
                    .where(Resource.connection_id == export.connection_id)
                    .group_by(Resource.resource_type)
                ).all()
            )
        assert by_type == stats.total_by_resource_type
    # the download went through the redirect; storage never saw the Authorization header
    requests = stack.sim.sim.list_storage_requests()
    assert len(requests) >= 3
    assert not any(r.authorization_present for r in requests)
    with stack.db.read_session() as session:
        users = set(session.scalars(select(Connection.external_id)))
    assert users == {"user-0", "user-1", "user-2"}


def test_duplicated_and_reordered_webhooks_apply_once(live_stack: LiveStack) -> None:
    stack = live_stack
    sim = stack.sim.sim
    dup = sim.connect(behaviour={"duplicate_webhooks": 3})
    wait_for(finished(stack, dup.org_connection_id, ("complete",)))
    with stack.db.read_session() as session:
        rows = session.scalars(
            select(InboxEvent).where(InboxEvent.org_connection_id == dup.org_connection_id)
        ).all()
        exports = session.scalars(select(Export)).all()
    assert Counter(r.event_type for r in rows) == {
        "patient.connection_success": 1,
        "patient.ehi_export_success": 1,
    }
    wait_for(lambda: all(r.delivery_count == 3 for r in _inbox(stack, dup.org_connection_id)))
    assert {r.apply_count for r in rows} == {1}
    assert len(exports) == 1

    # Revocation overtakes the success it follows: held, then released in reverse order.
    sim.hold_webhooks()
    late = sim.connect(send_webhook=True)
    sim.revoke([late.org_connection_id])
    sim.release_webhooks(order="reverse")
    wait_for(lambda: len(_inbox(stack, late.org_connection_id)) == 2, what="both events")
    wait_for(
        lambda: all(r.status == "applied" for r in _inbox(stack, late.org_connection_id)),
        what="applied",
    )
    time.sleep(2)  # give a wrong re-authorization the chance to happen
    with stack.db.read_session() as session:
        status = session.scalars(
            select(Connection.status).where(Connection.org_connection_id == late.org_connection_id)
        ).one()
    assert status == "revoked"
    # Applying may still see them in either order: an export, if any, was never downloaded.
    export = export_of(stack, late.org_connection_id)
    assert export is None or export.status == "cancelled"
    assert stored_lines(stack, late.org_connection_id) == []


def _inbox(stack: LiveStack, org_connection_id: str) -> list[InboxEvent]:
    with stack.db.read_session() as session:
        return list(
            session.scalars(
                select(InboxEvent).where(InboxEvent.org_connection_id == org_connection_id)
            )
        )


def test_malformed_lines_and_disagreeing_stats_end_partial_with_a_report(
    live_stack: LiveStack,
) -> None:
    stack = live_stack
    conn = stack.sim.sim.connect(behaviour={"malformed_lines": 3, "stats_mismatch": 2})
    export = wait_for(finished(stack, conn.org_connection_id, ("complete", "partial")))
    assert export.status == "partial"
    report = export.report
    assert report is not None and report["errors"] == 3
    with stack.db.read_session() as session:
        errors = session.scalar(select(func.count()).where(IngestError.export_id == export.id))
        alert = session.scalars(select(Alert).where(Alert.kind == "ingest_partial")).one()
    assert errors == 3
    assert str(export.id) in alert.message
    good_lines = [line for line in sim_file_lines(stack, conn.org_connection_id) if _valid(line)]
    assert sorted(stored_lines(stack, conn.org_connection_id)) == sorted(good_lines)


def _valid(line: bytes) -> bool:
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(resource, dict)
        and bool(resource.get("resourceType"))
        and bool(resource.get("id"))
    )


def test_failed_export_records_reason_and_alerts(live_stack: LiveStack) -> None:
    stack = live_stack
    conn = stack.sim.sim.connect(behaviour={"fail_reason": "scope_patient_missing"})
    export = wait_for(finished(stack, conn.org_connection_id, ("failed",)))
    assert export.failure_reason == "scope_patient_missing"
    alert = wait_for(lambda: _alert(stack, "export_failed"), what="export_failed alert")
    assert "scope_patient_missing" in alert.message


def _alert(stack: LiveStack, kind: str) -> Alert | None:
    with stack.db.read_session() as session:
        return session.scalars(select(Alert).where(Alert.kind == kind)).first()


def test_truncated_transfer_resumes_and_lands_exactly(live_stack: LiveStack) -> None:
    stack = live_stack
    conn = stack.sim.sim.connect(behaviour={"truncate_after_bytes": 50_000})
    export = wait_for(finished(stack, conn.org_connection_id, ("complete", "partial")))
    assert export.status == "complete"
    assert sorted(stored_lines(stack, conn.org_connection_id)) == sorted(
        sim_file_lines(stack, conn.org_connection_id)
    )
    ranges = [r.range for r in stack.sim.sim.list_storage_requests() if r.range]
    assert ranges, "the client resumed with a Range request"


def test_link_off_the_allow_list_is_refused_and_alerted(live_stack: LiveStack) -> None:
    stack = live_stack
    conn = stack.sim.sim.connect(send_webhook=False)
    with stack.db.session() as session:
        session.add(
            Connection(
                id="manual-evil",
                org_connection_id=conn.org_connection_id,
                api_mode="test",
                source="fasten",
                status="authorized",
                created_at=_now(),
                updated_at=_now(),
            )
        )
    stack.sim.sim.emit(
        "test",
        "patient.ehi_export_success",
        {
            "org_connection_id": conn.org_connection_id,
            "task_id": "evil-task",
            "download_links": [{"url": "http://evil.example/steal.jsonl", "export_type": "jsonl"}],
            "stats": {"total_resources": 1},
        },
    )
    export = wait_for(finished(stack, conn.org_connection_id, ("failed",)), what="refusal")
    assert export.failure_reason == "download_refused"
    alert = wait_for(lambda: _alert(stack, "download_refused"), what="alert")
    assert "evil.example" in alert.message


def _now() -> Any:
    from ehi_bridge.db.base import utcnow

    return utcnow()


def _restart(stack: LiveStack, log_name: str) -> AbstractContextManager[Any]:
    """``ehi-bridge serve`` again on the stack's port and settings."""
    return running(
        ehi_command("serve", "--port", stack.base_url.rsplit(":", 1)[1]),
        stack.env,
        ready_url=f"{stack.base_url}/healthz",
        log_path=Path(stack.env["EHI_DATA_DIR"]) / log_name,
    )


def test_sigkill_during_download_and_ingest_then_exact_counts(live_stack: LiveStack) -> None:
    stack = live_stack
    # Large enough to be caught mid-flight: 20x one patient, throttled storage.
    conn = stack.sim.sim.connect(behaviour={"scale": 20, "throttle_bytes_per_second": 4_000_000})
    wait_for(finished(stack, conn.org_connection_id, ("downloading",)), what="download start")
    time.sleep(0.5)
    stack.proc.send_signal(signal.SIGKILL)
    stack.proc.wait()
    stack.sim.sim.set_behaviour(conn.org_connection_id, throttle_bytes_per_second=None)
    with _restart(stack, "restart.log") as proc:
        wait_for(finished(stack, conn.org_connection_id, ("ingesting",)), what="ingest start")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with _restart(stack, "restart2.log"):
        export = wait_for(
            finished(stack, conn.org_connection_id, ("complete",)), timeout=240, what="complete"
        )
    sim_export = next(
        e for e in stack.sim.sim.list_exports() if e.org_connection_id == conn.org_connection_id
    )
    assert export.ingested_total == sim_export.file.stats.total_resources
    with stack.db.read_session() as session:
        stored = session.scalar(
            select(func.count()).where(Resource.connection_id == export.connection_id)
        )
    assert stored == sim_export.file.stats.total_resources


def test_file_past_its_24_hours_expires_alerts_and_is_requested_again(
    live_stack: LiveStack,
) -> None:
    stack = live_stack
    sim = stack.sim.sim
    conn = sim.connect(behaviour={"export_delay_seconds": 60})
    # The success webhook is held back until the file's 24-hour life is over.
    wait_for(finished(stack, conn.org_connection_id, ("pending",)), what="export requested")
    sim.hold_webhooks()
    sim.advance_clock(61)
    wait_for(lambda: any(e.status == "success" for e in sim.list_exports()), what="file ready")
    sim.advance_clock(25 * 3600)
    sim.set_behaviour(conn.org_connection_id, export_delay_seconds=1.0)  # the next export
    sim.release_webhooks(order="fifo")
    wait_for(lambda: _alert(stack, "export_expired"), what="expired alert")
    with stack.db.read_session() as session:
        statuses = [
            e.status
            for e in session.scalars(
                select(Export)
                .join(Connection, Connection.id == Export.connection_id)
                .where(Connection.org_connection_id == conn.org_connection_id)
                .order_by(Export.id)
            )
        ]
    assert statuses[0] == "expired"
    # ... and a fresh export was requested, whose file lands.
    export = wait_for(finished(stack, conn.org_connection_id, ("complete",)), what="new export")
    assert export.trigger == "expired"
    assert export.ingested_total == export.stats_total
