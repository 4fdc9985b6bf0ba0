from __future__ import annotations

from sqlalchemy import select

from ehi_bridge.auth.models import AuditLog
from ehi_bridge.db.engine import Database
from tests.integration.api.factories import TestClient, make_connection, make_export
from tests.integration.api.test_connections import collect


def test_list_filters_and_pages(client: TestClient, db: Database, auth: dict) -> None:
    with db.session() as session:
        a = make_connection(session, 1)
        b = make_connection(session, 2)
        ids = [
            make_export(
                session, a if n % 2 else b, status="failed" if n % 3 == 0 else "complete"
            ).id
            for n in range(11)
        ]
        a_id, a_org = a.id, a.org_connection_id
    items = collect(client, auth, "/api/exports", limit=3)
    assert [e["id"] for e in items] == list(reversed(ids))
    assert "report" not in items[0]
    assert len(collect(client, auth, "/api/exports", status="failed")) == 4
    by_id = collect(client, auth, "/api/exports", connection_id=a_id, limit=2)
    by_org = collect(client, auth, "/api/exports", connection_id=a_org, limit=2)
    assert by_id == by_org
    assert len(by_id) == 5 and {e["connection_id"] for e in by_id} == {a_id}
    assert client.get("/api/exports?connection_id=nope", headers=auth).status_code == 404
    assert client.get("/api/exports?cursor=eyJ4Ijow", headers=auth).status_code == 400


def test_detail_includes_report(client: TestClient, db: Database, auth: dict) -> None:
    report = {"expected": {"Patient": 1}, "ingested": {"Patient": 1}, "missing": {}}
    with db.session() as session:
        export = make_export(
            session,
            make_connection(session, 1),
            report=report,
            stats_by_type={"Patient": 1},
            last_error=None,
        )
    response = client.get(f"/api/exports/{export.id}", headers=auth)
    assert response.status_code == 200
    detail = response.json()
    assert detail["report"] == report
    assert detail["stats_by_type"] == {"Patient": 1}
    assert detail["status"] == "complete"
    assert client.get("/api/exports/12345", headers=auth).status_code == 404
    assert client.get("/api/exports/-3", headers=auth).status_code == 422


def test_request_and_retry(client: TestClient, db: Database, auth: dict) -> None:
    with db.session() as session:
        connection = make_connection(session, 1, status="authorized")
        revoked = make_connection(session, 2, status="revoked")
        failed = make_export(session, connection, status="failed")
        cid, org, revoked_id, failed_id = (
            connection.id,
            connection.org_connection_id,
            revoked.id,
            failed.id,
        )
    response = client.post("/api/exports", json={"connection_id": org}, headers=auth)
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["connection_id"] == cid
    assert created["status"] == "requested"
    assert created["trigger"] == "manual"
    again = client.post("/api/exports", json={"connection_id": cid}, headers=auth)
    assert again.json()["id"] == created["id"]  # one active export per connection

    retried = client.post(f"/api/exports/{failed_id}/retry", headers=auth)
    assert retried.status_code == 202
    assert retried.json()["connection_id"] == cid

    conflict = client.post("/api/exports", json={"connection_id": revoked_id}, headers=auth)
    assert conflict.status_code == 409
    missing = client.post("/api/exports", json={"connection_id": "nope"}, headers=auth)
    assert missing.status_code == 404
    assert client.post("/api/exports/999/retry", headers=auth).status_code == 404
    assert client.post("/api/exports", json={}, headers=auth).status_code == 422
    with db.read_session() as session:
        actions = [a.action for a in session.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert actions == ["export.request", "export.request", "export.retry"]
