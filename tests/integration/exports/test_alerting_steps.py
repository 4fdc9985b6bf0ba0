"""Export steps that raise an alert commit it with the change it reports (SQLite and PostgreSQL).

A step is repeated after a crash that followed its commit; the repeat finds the change made
and raises nothing, so the alert must already be stored by then.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select

from ehi_bridge.alerts.models import Alert
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from ehi_bridge.exports import service
from ehi_bridge.exports.models import Export
from tests.integration.api.factories import make_connection, make_export

SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]
PARTIAL_REPORT: dict[str, object] = {"resources": 7, "errors": 2, "by_type": {"Patient": 1}}

Step = Callable[[Database, int], bool]

STEPS: dict[str, tuple[str, Step, str, str]] = {
    # name: (status before, the step, status after, alert kind)
    "request_failed": (
        "requested",
        lambda db, export_id: service.request_failed(db, SETTINGS, export_id, "HTTPStatusError"),
        "failed",
        "export_failed",
    ),
    "deadline_passed": (
        "pending",
        lambda db, export_id: service.deadline_passed(db, SETTINGS, export_id, None),
        "timed_out",
        "export_timed_out",
    ),
    "deadline_poll_says_failed": (
        "pending",
        lambda db, export_id: service.deadline_passed(db, SETTINGS, export_id, "failed"),
        "failed",
        "export_failed",
    ),
    "file_gone": (
        "downloading",
        lambda db, export_id: service.file_gone(db, SETTINGS, export_id),
        "expired",
        "export_expired",
    ),
    "download_refused": (
        "downloading",
        lambda db, export_id: service.download_refused(db, SETTINGS, export_id, "evil.example"),
        "failed",
        "download_refused",
    ),
    "download_failed": (
        "downloading",
        lambda db, export_id: service.download_failed(db, SETTINGS, export_id, "ReadTimeout"),
        "failed",
        "export_failed",
    ),
    "ingested_partial": (
        "ingesting",
        lambda db, export_id: service.record_ingest(
            db, SETTINGS, export_id, PARTIAL_REPORT, complete=False
        ),
        "partial",
        "ingest_partial",
    ),
}


def _export(db: Database, status: str) -> int:
    with db.session() as session:
        return make_export(session, make_connection(session), status=status).id


def _state(db: Database, export_id: int) -> tuple[str, list[Alert]]:
    with db.read_session() as session:
        export = session.get(Export, export_id)
        assert export is not None
        return export.status, list(session.scalars(select(Alert)))


@pytest.mark.parametrize("name", sorted(STEPS))
def test_the_alert_is_committed_with_the_change_and_a_repeat_adds_nothing(
    db: Database, name: str
) -> None:
    before, step, after, kind = STEPS[name]
    export_id = _export(db, before)

    assert step(db, export_id) is True
    status, alerts = _state(db, export_id)
    assert status == after
    assert [(a.kind, a.count) for a in alerts] == [(kind, 1)]
    assert str(export_id) in alerts[0].message
    assert alerts[0].delivered_at is not None  # the log sink ran once the step committed

    assert step(db, export_id) is False
    assert _state(db, export_id)[1][0].count == 1


def test_a_complete_ingest_raises_no_alert(db: Database) -> None:
    export_id = _export(db, "ingesting")
    assert service.record_ingest(db, SETTINGS, export_id, {"resources": 7}, complete=True)
    status, alerts = _state(db, export_id)
    assert (status, alerts) == ("complete", [])
