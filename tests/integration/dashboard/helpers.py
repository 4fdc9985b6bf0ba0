"""Rows and sessions for dashboard, connect-page and browser tests."""

from __future__ import annotations

import hashlib
import re
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
from pydantic import SecretStr

from ehi_bridge.alerts.models import Alert
from ehi_bridge.auth.service import create_user
from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.records.models import IngestError, Resource
from ehi_bridge.webhooks.models import InboxEvent

with warnings.catch_warnings():
    # Starlette asks for ``httpx2``; the project pins httpx, which works the same here.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

USERNAME = "operator"
PASSWORD = "correct horse battery"
SESSION_SECRET = "test-session-secret-0123456789abcdef"
LINK_SECRET = "test-connect-link-secret-0123456789"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def settings_for(database_url: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "session_secret": SecretStr(SESSION_SECRET),
        "connect_link_secret": SecretStr(LINK_SECRET),
        "test_public_id": "public_test_dash",
        "live_public_id": "public_live_dash",
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


def add_user(db: Database, username: str = USERNAME, password: str = PASSWORD) -> None:
    with db.session() as session:
        create_user(session, username, password)


def csrf_from(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no csrf_token in the page"
    return match.group(1)


def login(client: TestClient, username: str = USERNAME, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token."""
    page = client.get("/dashboard/login")
    assert page.status_code == 200
    response = client.post(
        "/dashboard/login",
        data={"username": username, "password": password, "csrf_token": csrf_from(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    overview = client.get("/dashboard")
    assert overview.status_code == 200, (overview.status_code, overview.text[:2000])
    return csrf_from(overview.text)


@dataclass
class Seeded:
    connection_id: str
    org_connection_id: str
    external_id: str
    export_ids: list[int] = field(default_factory=list)
    event_ids: list[int] = field(default_factory=list)
    parked_event_id: int = 0
    failed_export_id: int = 0


def _event(
    org_connection_id: str | None,
    event_type: str,
    status: str,
    at: datetime,
    last_error: str | None = None,
) -> InboxEvent:
    event_id = str(uuid.uuid4())
    body = orjson.dumps(
        {
            "api_mode": "test",
            "date": at.isoformat(),
            "id": event_id,
            "type": event_type,
            "data": {"org_connection_id": org_connection_id},
        }
    )
    return InboxEvent(
        event_id=event_id,
        webhook_id=event_id,
        event_type=event_type,
        api_mode="test",
        body=body,
        received_at=at,
        last_received_at=at,
        delivery_count=1,
        status=status,
        org_connection_id=org_connection_id,
        attempts=5 if status == "parked" else 1,
        apply_count=1 if status == "applied" else 0,
        replays=0,
        last_error=last_error,
    )


def seed(db: Database, external_id: str = "patient-42", platform: str = "epic") -> Seeded:
    """One authorized connection with a complete export, records, events, a parked event,
    a failed export and an alert."""
    now = utcnow()
    org = f"org-{uuid.uuid4().hex[:10]}"
    with db.session() as session:
        connection = Connection(
            id=uuid.uuid4().hex,
            org_connection_id=org,
            external_id=external_id,
            api_mode="test",
            source="fasten",
            status="authorized",
            status_changed_at=now,
            platform_type=platform,
            endpoint_id="ep-1",
            brand_id="br-1",
            portal_id="po-1",
            created_at=now - timedelta(hours=2),
            updated_at=now,
            authorized_at=now - timedelta(hours=2),
        )
        other = Connection(
            id=uuid.uuid4().hex,
            org_connection_id=f"org-{uuid.uuid4().hex[:10]}",
            external_id="someone-else",
            api_mode="live",
            source="fasten",
            status="revoked",
            status_changed_at=now,
            platform_type="cerner",
            created_at=now - timedelta(hours=3),
            updated_at=now,
            revoked_at=now,
        )
        session.add_all([connection, other])
        session.flush()
        done = Export(
            connection_id=connection.id,
            task_id=f"task-{uuid.uuid4().hex[:8]}",
            status="complete",
            trigger="auto",
            requested_at=now - timedelta(hours=2),
            succeeded_at=now - timedelta(hours=1),
            completed_at=now - timedelta(minutes=75),
            stats_total=3,
            stats_by_type={"Patient": 1, "Observation": 2},
            ingested_total=3,
            ingested_by_type={"Patient": 1, "Observation": 2},
            report={  # the shape IngestReport.as_dict() stores, with long values
                "connection_id": "c",
                "export_id": 1,
                "status": "partial",
                "lines": 4,
                "resources": 3,
                "inserted": 3,
                "updated": 0,
                "unchanged": 0,
                "duplicates": 0,
                "errors": 1,
                "by_type": {f"VeryLongResourceTypeName{i:02d}": i for i in range(40)},
                "expected_by_type": {f"VeryLongResourceTypeName{i:02d}": i for i in range(40)},
                "duplicates_by_type": {"Observation": 1},
                "expected_total": 4,
                "mismatches": [{"resource_type": "Observation", "expected": 3, "ingested": 2}],
                "error_samples": [{"line": 3, "reason": "malformed_json:" + "x" * 180}],
                "bytes_read": 1234,
                "seconds": 0.05,
                "parser_peak_rss_kib": 20000,
            },
            bytes_downloaded=1234,
            attempts=1,
            created_at=now - timedelta(hours=2),
            updated_at=now,
        )
        failed = Export(
            connection_id=connection.id,
            task_id=f"task-{uuid.uuid4().hex[:8]}",
            status="failed",
            failure_reason="token_refresh_failure",
            trigger="auto",
            requested_at=now - timedelta(minutes=30),
            attempts=1,
            created_at=now - timedelta(minutes=30),
            updated_at=now,
        )
        session.add_all([done, failed])
        session.flush()
        for rtype, body in (
            (
                "Patient",
                {
                    "resourceType": "Patient",
                    "id": "p1",
                    "name": [{"family": "Doe"}],
                    "birthDate": "1980-02-29",
                },
            ),
            (
                "Observation",
                {
                    "resourceType": "Observation",
                    "id": "o1",
                    "status": "final",
                    "code": {"coding": [{"code": "8867-4", "display": "Heart rate"}]},
                    "valueQuantity": {"value": 72, "unit": "/min"},
                    "effectiveDateTime": "2024-05-01T10:00:00Z",
                },
            ),
            ("Observation", {"resourceType": "Observation", "id": "o2", "status": "final"}),
        ):
            raw = orjson.dumps(body)
            session.add(
                Resource(
                    connection_id=connection.id,
                    resource_type=rtype,
                    resource_id=str(body["id"]),
                    raw=raw,
                    content_hash=hashlib.sha256(raw).digest(),
                    version=1,
                    last_updated=None,
                    patient_ref="Patient/p1",
                    export_id=done.id,
                    ingested_at=now,
                )
            )
        session.add(
            IngestError(
                export_id=done.id,
                connection_id=connection.id,
                line_number=4,
                reason="malformed JSON",
                created_at=now,
            )
        )
        events = [
            _event(org, "patient.connection_success", "applied", now - timedelta(hours=2)),
            _event(org, "patient.ehi_export_success", "applied", now - timedelta(hours=1)),
            _event(None, "webhook.test", "ignored", now - timedelta(minutes=10)),
        ]
        parked = _event(
            org,
            "patient.ehi_export_failed",
            "parked",
            now - timedelta(minutes=20),
            last_error="RuntimeError: simulated",
        )
        session.add_all([*events, parked])
        session.add(
            Alert(
                kind="export_failed",
                dedup_key=f"export_failed:{failed.task_id}",
                severity="warning",
                message="export failed: token_refresh_failure",
                context={"export_id": 2},
                count=1,
                first_at=now,
                last_at=now,
            )
        )
        session.flush()
        return Seeded(
            connection_id=connection.id,
            org_connection_id=org,
            external_id=external_id,
            export_ids=[done.id, failed.id],
            event_ids=[e.id for e in events],
            parked_event_id=parked.id,
            failed_export_id=failed.id,
        )
