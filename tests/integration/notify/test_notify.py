"""records.ingested notifications to a real HTTP receiver on loopback (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook

from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.notify.service import deliver_event, event_id, notify_records_ingested
from tests.integration.fasten.servers import receiver
from tests.support import free_port

SECRET = "whsec_" + base64.b64encode(b"downstream-secret-0123456789abcd").decode()
DONE = datetime(2026, 11, 22, 8, 30, tzinfo=UTC)


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def settings(url: str | None, secret: str | None = SECRET) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        downstream_url=url,
        downstream_secret=SecretStr(secret) if secret else None,
    )


def seed(db: Database, status: str = "complete", completed_at: datetime | None = DONE) -> int:
    now = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    with db.session() as session:
        session.add(
            Connection(
                id="conn-1",
                org_connection_id="org-conn-1",
                external_id="user-42",
                api_mode="test",
                status="authorized",
                created_at=now,
                updated_at=now,
            )
        )
        session.flush()
        export = Export(
            connection_id="conn-1",
            task_id="task-1",
            status=status,
            stats_total=12,
            ingested_total=11,
            ingested_by_type={"Patient": 1, "Observation": 10},
            report={"lines": 13, "errors": 1, "duplicates": 1, "error_samples": [{"line": 4}]},
            completed_at=completed_at,
            created_at=now,
            updated_at=now,
        )
        session.add(export)
        session.flush()
        return export.id


def test_signed_event_verifies_and_carries_ids_and_counts(db: Database) -> None:
    export_id = seed(db, status="partial")
    with receiver() as hook:
        delivered = notify_records_ingested(db, settings(hook.url), export_id, sleep=Sleeps())
        [request] = hook.received
    assert delivered is True
    event = Webhook(SECRET).verify(request.body, request.headers)
    assert event == {
        "id": event_id(export_id, "2026-11-22T08:30:00Z"),
        "type": "records.ingested",
        "date": "2026-11-22T08:30:00Z",
        "data": {
            "connection_id": "conn-1",
            "org_connection_id": "org-conn-1",
            "external_id": "user-42",
            "export_id": export_id,
            "counts": {
                "resources": 11,
                "by_type": {"Patient": 1, "Observation": 10},
                "expected_total": 12,
                "lines": 13,
                "duplicates": 1,
                "errors": 1,
            },
            "status": "partial",
        },
    }
    assert request.headers["webhook-id"] == event["id"]


def test_retries_on_500_with_the_same_id_and_body(db: Database) -> None:
    export_id = seed(db)
    sleeps = Sleeps()
    with receiver(script=[500, 503]) as hook:
        delivered = notify_records_ingested(db, settings(hook.url), export_id, sleep=sleeps)
        received = list(hook.received)
    assert delivered is True
    assert len(received) == 3 and len(sleeps) == 2
    assert len({r.body for r in received}) == 1
    assert len({r.headers["webhook-id"] for r in received}) == 1
    for request in received:
        Webhook(SECRET).verify(request.body, request.headers)
    assert 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0


def test_gives_up_after_the_attempt_budget(db: Database) -> None:
    export_id = seed(db)
    sleeps = Sleeps()
    with receiver(script=[500] * 10) as hook:
        delivered = notify_records_ingested(
            db, settings(hook.url), export_id, sleep=sleeps, max_attempts=3
        )
        assert len(hook.received) == 3
    assert delivered is False and len(sleeps) == 2


def test_a_4xx_is_final(db: Database) -> None:
    export_id = seed(db)
    sleeps = Sleeps()
    with receiver(script=[400]) as hook:
        assert notify_records_ingested(db, settings(hook.url), export_id, sleep=sleeps) is False
        assert len(hook.received) == 1
    assert sleeps == []


def test_not_configured_or_not_ingested_sends_nothing(db: Database) -> None:
    export_id = seed(db, status="ingesting", completed_at=None)
    with receiver() as hook:
        assert notify_records_ingested(db, settings(None), export_id) is False
        assert notify_records_ingested(db, settings(hook.url, secret=None), export_id) is False
        assert notify_records_ingested(db, settings(hook.url), export_id) is False
        assert notify_records_ingested(db, settings(hook.url), 999_999) is False
        assert hook.received == []


def test_retry_after_and_network_errors() -> None:
    event = {"id": "evt_1", "type": "records.ingested", "date": "d", "data": {}}
    sleeps = Sleeps()
    with receiver(script=[(429, {"retry-after": "9"}), 502]) as hook:
        assert deliver_event(hook.url, SECRET, event, sleep=sleeps) is True
    assert sleeps[0] == 9.0 and 0 <= sleeps[1] <= 2.0 and len(sleeps) == 2

    sleeps.clear()
    with receiver(script=[(503, {"retry-after": "3600"})]) as hook:
        assert deliver_event(hook.url, SECRET, event, sleep=sleeps) is False  # too long
    assert sleeps == []

    sleeps.clear()
    dead = f"http://127.0.0.1:{free_port()}/hook"
    assert deliver_event(dead, SECRET, event, sleep=sleeps, max_attempts=4) is False
    assert len(sleeps) == 3


def test_each_ingest_run_has_its_own_event_id() -> None:
    first = event_id(7, "2026-11-22T08:30:00Z")
    assert first == event_id(7, "2026-11-22T08:30:00Z")
    assert first != event_id(7, (DONE + timedelta(hours=1)).isoformat())
    assert first != event_id(8, "2026-11-22T08:30:00Z")


@pytest.mark.parametrize("secret", ["not-base64!!", "whsec_"])
def test_a_bad_secret_is_reported_not_raised(db: Database, secret: str) -> None:
    export_id = seed(db)
    with receiver() as hook:
        assert notify_records_ingested(db, settings(hook.url, secret), export_id) is False
        assert hook.received == []


def test_body_is_plain_json() -> None:
    with receiver() as hook:
        deliver_event(hook.url, SECRET, {"id": "evt_x", "type": "t", "date": "d", "data": {}})
        [request] = hook.received
    assert json.loads(request.body)["id"] == "evt_x"
    assert request.headers["content-type"] == "application/json"
