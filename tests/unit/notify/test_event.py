"""The records.ingested event body (pure: built from unsaved model objects)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ehi_bridge.connections.models import Connection
from ehi_bridge.exports.models import Export
from ehi_bridge.notify.service import build_records_ingested, event_id

DONE = datetime(2026, 11, 22, 8, 30, tzinfo=UTC)


def _export(**values: object) -> Export:
    base: dict[str, object] = {
        "id": 5,
        "connection_id": "c1",
        "status": "complete",
        "completed_at": DONE,
        "ingested_total": 2,
        "ingested_by_type": {"Patient": 1, "Condition": 1},
        "stats_total": 2,
        "report": {"errors": 0, "lines": 2, "seconds": 0.5, "flag": True, "mismatches": []},
    }
    base.update(values)
    return Export(**base)


CONNECTION = Connection(id="c1", org_connection_id="oc1", external_id=None, api_mode="live")


def test_event_is_deterministic_and_holds_only_ids_and_counts() -> None:
    event = build_records_ingested(_export(), CONNECTION)
    assert event == build_records_ingested(_export(), CONNECTION)
    assert event is not None
    assert event["id"] == event_id(5, "2026-11-22T08:30:00Z")
    assert event["data"]["counts"] == {
        "resources": 2,
        "by_type": {"Patient": 1, "Condition": 1},
        "expected_total": 2,
        "errors": 0,
        "lines": 2,
    }
    assert event["data"]["external_id"] is None


@pytest.mark.parametrize(
    "changes",
    [{"status": "ingesting"}, {"status": "failed"}, {"completed_at": None}],
)
def test_no_event_before_the_ingest_finished(changes: dict[str, object]) -> None:
    assert build_records_ingested(_export(**changes), CONNECTION) is None


def test_a_new_run_gets_a_new_id() -> None:
    first = build_records_ingested(_export(), CONNECTION)
    second = build_records_ingested(_export(completed_at=DONE.replace(hour=9)), CONNECTION)
    assert first and second and first["id"] != second["id"]
