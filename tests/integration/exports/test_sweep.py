"""The sweep: a passed deadline gets its check, a stalled export its alert, among many in flight.

Nothing sleeps until a deadline any more; these rows are what the sweep must find (and only
them) while fifty other exports are in every other state of flight.
"""

from __future__ import annotations

from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from ehi_bridge.alerts.models import Alert
from ehi_bridge.config import Settings
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.exports import service
from ehi_bridge.exports.models import Export
from ehi_bridge.outbox.models import OutboxItem
from tests.integration.api.factories import TestClient, make_connection, make_export

SETTINGS = Settings(_env_file=None, export_stall_minutes=10)  # type: ignore[call-arg]


def _in_flight(db: Database) -> tuple[int, int]:
    """Fifty exports on their way, plus one past its deadline and one stalled download."""
    now = utcnow()
    with db.session() as session:
        for n in range(50):
            connection = make_connection(session, n)
            status = ("pending", "requested", "downloading", "ingesting", "complete")[n % 5]
            make_export(
                session,
                connection,
                status=status,
                deadline_at=now + timedelta(minutes=30),
                created_at=now - timedelta(minutes=2),
                updated_at=now - timedelta(minutes=2),
            )
        due = make_export(
            session,
            make_connection(session, 50),
            status="pending",
            deadline_at=now - timedelta(seconds=1),
            created_at=now - timedelta(minutes=31),
            updated_at=now - timedelta(minutes=31),
        )
        stalled = make_export(
            session,
            make_connection(session, 51),
            status="downloading",
            created_at=now - timedelta(minutes=40),
            updated_at=now - timedelta(minutes=25),
        )
        return due.id, stalled.id


def test_sweep_finds_the_due_deadline_and_the_stall_among_fifty(db: Database) -> None:
    due, stalled = _in_flight(db)
    result = service.sweep(db, SETTINGS, utcnow())
    assert (result.deadlines, result.stalled) == (1, 1)
    with db.read_session() as session:
        assert list(session.scalars(select(OutboxItem.workflow_id))) == [f"deadline-{due}"]
        alerts = session.scalars(select(Alert)).all()
        assert [(a.kind, a.context["export_id"]) for a in alerts] == [("export_stalled", stalled)]
        explained = session.get(Export, stalled)
        assert explained is not None
        assert (explained.last_error or "").startswith("stalled: the download has not finished")

    again = service.sweep(db, SETTINGS, utcnow())  # every few seconds: nothing new
    assert again.deadlines == 1  # still due until the check has run
    with db.read_session() as session:
        assert len(session.scalars(select(OutboxItem)).all()) == 1
        assert len(session.scalars(select(Alert)).all()) == 1


def test_deadline_check_times_out_and_alerts(db: Database) -> None:
    due, _ = _in_flight(db)
    service.sweep(db, SETTINGS, utcnow())
    assert service.deadline_passed(db, SETTINGS, due, remote_status=None)
    with db.read_session() as session:
        export = session.get(Export, due)
        assert export is not None and export.status == "timed_out"
        kinds = sorted(a.kind for a in session.scalars(select(Alert)))
        assert kinds == ["export_stalled", "export_timed_out"]
        others = session.scalars(select(Export.status).where(Export.id != due)).all()
        assert "timed_out" not in others
    assert service.sweep(db, SETTINGS, utcnow()).deadlines == 0


def test_readyz_and_metrics_count_stalled_exports(client: TestClient, db: Database) -> None:
    _in_flight(db)
    check = client.get("/readyz").json()["checks"]["exports"]
    assert (check["ok"], check["value"]) == (True, 1.0)
    assert check["detail"] == "1 stalled (see alerts)"
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    (sample,) = families["ehi_bridge_exports_stalled"].samples
    assert sample.value == 1.0
