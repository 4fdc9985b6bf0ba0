"""POST /api/connect/complete: a connect-link token or an API token records the connection.

Recording is ``connections.service.record_widget_complete`` (the connections feature).
"""

from __future__ import annotations

import time

from sqlalchemy import select

from ehi_bridge.auth.connect_links import make_connect_token
from ehi_bridge.auth.models import AuditLog
from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from tests.integration.api.factories import TestClient

WIDGET = {
    "org_connection_id": "org-widget-1",
    "endpoint_id": "ep-1",
    "brand_id": "br-1",
    "portal_id": "po-1",
    "platform_type": "epic",
}


def test_refused_without_credentials(client: TestClient, settings: Settings) -> None:
    response = client.post("/api/connect/complete", json=WIDGET)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    expired = make_connect_token(settings, "patient-1", ttl=60, now=time.time() - 3600)
    for headers, body in (
        ({"X-Connect-Token": expired}, WIDGET),
        ({"X-Connect-Token": "forged"}, WIDGET),
        ({}, {**WIDGET, "connect_token": expired}),
        ({"Authorization": "Bearer nope"}, WIDGET),
    ):
        assert client.post("/api/connect/complete", json=body, headers=headers).status_code == 401


def test_link_for_another_patient_is_403(client: TestClient, settings: Settings) -> None:
    token = make_connect_token(settings, "patient-1", ttl=600)
    response = client.post(
        "/api/connect/complete",
        json={**WIDGET, "external_id": "patient-2"},
        headers={"X-Connect-Token": token},
    )
    assert response.status_code == 403


def test_bad_body_is_422(client: TestClient, auth: dict) -> None:
    for body in ({}, {"org_connection_id": ""}, {**WIDGET, "api_mode": "prod"}):
        assert client.post("/api/connect/complete", json=body, headers=auth).status_code == 422


def test_connect_link_records_the_connection(
    client: TestClient, db: Database, settings: Settings
) -> None:
    token = make_connect_token(settings, "patient-1", ttl=600)
    response = client.post("/api/connect/complete", json={**WIDGET, "connect_token": token})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["org_connection_id"] == "org-widget-1"
    assert body["external_id"] == "patient-1"
    with db.read_session() as session:
        stored = session.scalars(
            select(Connection).where(Connection.org_connection_id == "org-widget-1")
        ).one()
        assert stored.external_id == "patient-1"
        assert stored.platform_type == "epic"
        audit = session.scalars(select(AuditLog)).one()
        assert (audit.actor_kind, audit.actor_name, audit.action) == (
            "connect",
            "patient-1",
            "connect.complete",
        )


def test_api_token_records_the_connection(client: TestClient, db: Database, auth: dict) -> None:
    response = client.post(
        "/api/connect/complete",
        json={**WIDGET, "external_id": "patient-9", "api_mode": "live", "portal_id": ""},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    assert response.json()["external_id"] == "patient-9"
    assert response.json()["api_mode"] == "live"


def test_connection_of_another_patient_is_409(
    client: TestClient, db: Database, settings: Settings
) -> None:
    first = make_connect_token(settings, "patient-1", ttl=600)
    second = make_connect_token(settings, "patient-2", ttl=600)
    ok = client.post("/api/connect/complete", json=WIDGET, headers={"X-Connect-Token": first})
    assert ok.status_code == 200
    again = client.post("/api/connect/complete", json=WIDGET, headers={"X-Connect-Token": first})
    assert again.status_code == 200 and again.json()["id"] == ok.json()["id"]
    taken = client.post("/api/connect/complete", json=WIDGET, headers={"X-Connect-Token": second})
    assert taken.status_code == 409
    with db.read_session() as session:
        stored = session.scalars(select(Connection)).one()
        assert stored.external_id == "patient-1"


def test_a_patient_cannot_choose_live_mode(
    client: TestClient, settings: Settings, db: Database
) -> None:
    token = make_connect_token(settings, "patient-1", ttl=600)
    body = {**WIDGET, "connect_token": token, "api_mode": "live"}
    response = client.post("/api/connect/complete", json=body)
    assert response.status_code == 403
    with db.read_session() as session:
        assert session.query(Connection).count() == 0
    same_mode = {**body, "api_mode": settings.connect_mode}
    assert client.post("/api/connect/complete", json=same_mode).status_code == 200
