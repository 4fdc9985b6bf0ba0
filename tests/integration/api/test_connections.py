from __future__ import annotations

import base64

from ehi_bridge.db.engine import Database
from tests.integration.api.factories import (
    T0,
    TestClient,
    fhir,
    make_connection,
    make_event,
    make_export,
    make_resource,
)


def seed_connections(db: Database, count: int) -> list[str]:
    with db.session() as session:
        ids = []
        for n in range(count):
            connection = make_connection(
                session,
                n,
                external_id=f"user-{n % 3}",
                platform_type="epic" if n % 2 else "cerner",
                status="revoked" if n % 5 == 0 else "authorized",
                api_mode="live" if n % 7 == 0 else "test",
            )
            ids.append(connection.id)
    return ids


def collect(client: TestClient, auth: dict[str, str], url: str, **params: object) -> list[dict]:
    items: list[dict] = []
    cursor = None
    pages = 0
    while True:
        query = dict(params) | ({"cursor": cursor} if cursor else {})
        response = client.get(url, params=query, headers=auth)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert pages < 100


def test_list_paginates_newest_first(client: TestClient, db: Database, auth: dict) -> None:
    ids = seed_connections(db, 23)
    first = client.get("/api/connections", params={"limit": 10}, headers=auth).json()
    assert len(first["items"]) == 10
    assert first["next_cursor"]
    items = collect(client, auth, "/api/connections", limit=10)
    assert [c["id"] for c in items] == list(reversed(ids))
    assert len({c["id"] for c in items}) == 23


def test_ties_on_created_at_are_not_lost(client: TestClient, db: Database, auth: dict) -> None:
    with db.session() as session:
        ids = {make_connection(session, 0, created_at=T0).id for _ in range(7)}
    items = collect(client, auth, "/api/connections", limit=2)
    assert {c["id"] for c in items} == ids
    assert len(items) == 7


def test_filters(client: TestClient, db: Database, auth: dict) -> None:
    seed_connections(db, 30)

    def ids(**params: object) -> list[dict]:
        return collect(client, auth, "/api/connections", limit=4, **params)

    assert {c["external_id"] for c in ids(external_id="user-1")} == {"user-1"}
    assert len(ids(external_id="user-1")) == 10
    assert {c["status"] for c in ids(status="revoked")} == {"revoked"}
    assert len(ids(status="revoked")) == 6
    assert {c["platform_type"] for c in ids(platform="epic")} == {"epic"}
    assert len(ids(mode="live")) == 5
    combined = ids(platform="cerner", status="authorized", mode="test")
    assert combined
    assert all(
        c["platform_type"] == "cerner" and c["status"] == "authorized" and c["api_mode"] == "test"
        for c in combined
    )
    assert ids(external_id="nobody") == []


def test_bad_cursor_and_limits(client: TestClient, db: Database, auth: dict) -> None:
    seed_connections(db, 3)
    for cursor in ("!!!", "abc", base64.urlsafe_b64encode(b'["x", 1]').decode(), "%00"):
        response = client.get("/api/connections", params={"cursor": cursor}, headers=auth)
        assert response.status_code == 400, cursor
        assert "cursor" in response.json()["detail"]
    events_cursor = client.get("/api/events", params={"limit": 1}, headers=auth).json()
    assert events_cursor["next_cursor"] is None
    for limit in (0, 501, -1, "x"):
        response = client.get("/api/connections", params={"limit": limit}, headers=auth)
        assert response.status_code == 422
    assert client.get("/api/connections?limit=500", headers=auth).status_code == 200
    assert client.get("/api/connections?mode=nope", headers=auth).status_code == 422


def test_cursor_of_another_list_is_rejected(client: TestClient, db: Database, auth: dict) -> None:
    seed_connections(db, 3)
    with db.session() as session:
        for n in range(3):
            make_event(session, n)
    cursor = client.get("/api/events", params={"limit": 1}, headers=auth).json()["next_cursor"]
    assert cursor
    response = client.get("/api/connections", params={"cursor": cursor}, headers=auth)
    assert response.status_code == 400


def test_detail_by_either_id(client: TestClient, db: Database, auth: dict) -> None:
    with db.session() as session:
        connection = make_connection(session, 1)
        other = make_connection(session, 2)
        for n in range(3):
            make_event(
                session, n, org_connection_id=connection.org_connection_id, delivery_count=n + 1
            )
        make_event(session, 9, org_connection_id=other.org_connection_id)
        export = make_export(session, connection, report={"missing": 0})
        make_export(session, other)
        make_resource(session, connection, "Patient", "p1", fhir("Patient", "p1"))
        make_resource(session, connection, "Observation", "o1", fhir("Observation", "o1"))
        make_resource(session, connection, "Observation", "o2", fhir("Observation", "o2"))
        make_resource(session, other, "Observation", "o1", fhir("Observation", "o1"))
        cid, org = connection.id, connection.org_connection_id
    for key in (cid, org):
        response = client.get(f"/api/connections/{key}", headers=auth)
        assert response.status_code == 200
        detail = response.json()
        assert detail["connection"]["id"] == cid
        assert [e["delivery_count"] for e in detail["events"]] == [3, 2, 1]
        assert set(detail["events"][0]) == {"id", "type", "status", "received_at", "delivery_count"}
        assert "Jane" not in response.text  # bodies are not part of the timeline
        assert [e["id"] for e in detail["exports"]] == [export.id]
        assert "report" not in detail["exports"][0]
        assert detail["resource_counts"] == {"Observation": 2, "Patient": 1}
    assert client.get("/api/connections/nope", headers=auth).status_code == 404


def test_user_detail(client: TestClient, db: Database, auth: dict) -> None:
    with db.session() as session:
        a = make_connection(session, 1, external_id="patient-7")
        b = make_connection(session, 2, external_id="patient-7")
        make_connection(session, 3, external_id="someone-else")
        make_export(session, a)
        make_export(session, b)
        make_resource(session, a, "Patient", "p1", fhir("Patient", "p1"))
        make_resource(session, b, "Patient", "p1", fhir("Patient", "p1"))
        make_resource(session, b, "Condition", "c1", fhir("Condition", "c1"))
        expected = {a.id, b.id}
    response = client.get("/api/users/patient-7", headers=auth)
    assert response.status_code == 200
    user = response.json()
    assert user["external_id"] == "patient-7"
    assert {c["id"] for c in user["connections"]} == expected
    assert {e["connection_id"] for e in user["exports"]} == expected
    assert user["resource_counts"] == {"Condition": 1, "Patient": 2}
    assert client.get("/api/users/nobody", headers=auth).status_code == 404
