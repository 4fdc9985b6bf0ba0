"""Rows for API tests, inserted through the models, and an authenticated test client."""

from __future__ import annotations

import hashlib
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy.orm import Session

from ehi_bridge.app import create_api
from ehi_bridge.auth.service import create_api_token
from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.records.models import Resource
from ehi_bridge.webhooks.models import InboxEvent

with warnings.catch_warnings():
    # Starlette asks for ``httpx2``; the project pins httpx, which works the same here.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

__all__ = ["TestClient"]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONNECT_SECRET = "connect-secret-for-tests"


def make_connection(session: Session, n: int = 0, **values: Any) -> Connection:
    at = values.pop("created_at", T0 + timedelta(minutes=n))
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "org_connection_id": f"org-{uuid.uuid4().hex[:12]}",
        "external_id": f"user-{n}",
        "api_mode": "test",
        "source": "fasten",
        "status": "authorized",
        "status_changed_at": at,
        "platform_type": "epic",
        "created_at": at,
        "updated_at": at,
        **values,
    }
    connection = Connection(**fields)
    session.add(connection)
    session.flush()
    return connection


def make_event(session: Session, n: int = 0, **values: Any) -> InboxEvent:
    event_id = values.pop("event_id", uuid.uuid4().hex)
    event_type = values.pop("event_type", "patient.connection_success")
    org = values.pop("org_connection_id", None)
    body = values.pop(
        "body",
        orjson.dumps(
            {
                "id": event_id,
                "type": event_type,
                "api_mode": values.get("api_mode", "test"),
                "date": "2026-01-01T00:00:00Z",
                "data": {"org_connection_id": org, "patient_name": "Jane Example"},
            }
        ),
    )
    at = values.pop("received_at", T0 + timedelta(seconds=n))
    fields: dict[str, Any] = {
        "event_id": event_id,
        "webhook_id": f"msg_{event_id}",
        "event_type": event_type,
        "api_mode": "test",
        "body": body,
        "received_at": at,
        "last_received_at": at,
        "delivery_count": 1,
        "status": "applied",
        "org_connection_id": org,
        "attempts": 1,
        "apply_count": 1,
        "replays": 0,
        **values,
    }
    event = InboxEvent(**fields)
    session.add(event)
    session.flush()
    return event


def make_export(session: Session, connection: Connection, **values: Any) -> Export:
    fields: dict[str, Any] = {
        "connection_id": connection.id,
        "task_id": uuid.uuid4().hex,
        "status": "complete",
        "trigger": "auto",
        "created_at": T0,
        "updated_at": T0,
        "bytes_downloaded": 0,
        "attempts": 1,
        **values,
    }
    export = Export(**fields)
    session.add(export)
    session.flush()
    return export


def fhir(resource_type: str, resource_id: str, **extra: Any) -> bytes:
    return orjson.dumps({"resourceType": resource_type, "id": resource_id, **extra})


def make_resource(
    session: Session, connection: Connection, resource_type: str, resource_id: str, raw: bytes
) -> Resource:
    resource = Resource(
        connection_id=connection.id,
        resource_type=resource_type,
        resource_id=resource_id,
        raw=raw,
        content_hash=hashlib.sha256(raw).digest(),
        version=1,
        ingested_at=T0,
        revoked=False,
    )
    session.add(resource)
    session.flush()
    return resource


def test_settings(database_url: str, data_dir: Path, **values: Any) -> Settings:
    # The tests read the schema without a token; test_guard checks the closed default.
    values.setdefault("public_api_docs", True)
    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        connect_link_secret=CONNECT_SECRET,  # type: ignore[arg-type]
        **values,
    )


test_settings.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return test_settings(database_url, tmp_path / "data")


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_api(settings, db)) as test_client:
        yield test_client


@pytest.fixture
def token(db: Database) -> str:
    with db.session() as session:
        _, plaintext = create_api_token(session, "tests")
    return plaintext


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
