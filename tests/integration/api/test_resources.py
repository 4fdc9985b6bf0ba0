from __future__ import annotations

import orjson
from sqlalchemy import select

from ehi_bridge.auth.models import AuditLog
from ehi_bridge.db.engine import Database
from tests.integration.api.factories import (
    TestClient,
    fhir,
    make_connection,
    make_resource,
)
from tests.integration.api.test_connections import collect

# Stored bytes are returned as stored: odd spacing, key order and non-ASCII survive.
ODD = b'{ "resourceType" : "Patient",  "id":"odd", "name":[{"text":"J\xc3\xb6rg \\u00e9"}] }'


def seed(db: Database, per_type: int = 4) -> dict[str, object]:
    with db.session() as session:
        a = make_connection(session, 1, external_id="patient-1")
        b = make_connection(session, 2, external_id="patient-1")
        c = make_connection(session, 3, external_id="patient-2")
        stored: dict[str, list[bytes]] = {a.id: [], b.id: [], c.id: []}
        for connection in (a, b, c):
            for resource_type in ("Observation", "Patient", "Condition"):
                for n in range(per_type):
                    raw = fhir(resource_type, f"{resource_type[0]}{n}", valueString=connection.id)
                    make_resource(session, connection, resource_type, f"{resource_type[0]}{n}", raw)
                    stored[connection.id].append(raw)
        make_resource(session, a, "Patient", "odd", ODD)
        stored[a.id].append(ODD)
        return {"a": a.id, "a_org": a.org_connection_id, "b": b.id, "c": c.id, "stored": stored}


def audit_rows(db: Database) -> list[tuple[str, str, str, str | None, str]]:
    with db.read_session() as session:
        return [
            (r.actor_name, r.action, r.target_type, r.target_id, r.path)
            for r in session.scalars(select(AuditLog).order_by(AuditLog.id))
        ]


def test_list_by_connection_pages_and_audits(client: TestClient, db: Database, auth: dict) -> None:
    data = seed(db)
    stored = data["stored"]
    assert isinstance(stored, dict)
    items = collect(client, auth, "/api/resources", connection_id=data["a"], limit=5)
    assert len(items) == 13
    assert sorted(orjson.dumps(i["resource"]) for i in items) == sorted(
        orjson.dumps(orjson.loads(raw)) for raw in stored[data["a"]]
    )
    keys = [(i["resource_type"], i["id"]) for i in items]
    assert keys == sorted(keys)
    same = collect(client, auth, "/api/resources", connection_id=data["a_org"], limit=50)
    assert same == items
    rows = audit_rows(db)
    assert len(rows) == 4  # three pages, then one more call
    assert set(rows) == {("tests", "resources.list", "connection", data["a"], "/api/resources")}


def test_list_by_external_id_and_type(client: TestClient, db: Database, auth: dict) -> None:
    data = seed(db)
    items = collect(client, auth, "/api/resources", external_id="patient-1", limit=7)
    assert len(items) == 25
    assert {i["connection_id"] for i in items} == {data["a"], data["b"]}
    observations = collect(
        client, auth, "/api/resources", external_id="patient-1", type="Observation", limit=3
    )
    assert len(observations) == 8
    assert {i["resource_type"] for i in observations} == {"Observation"}
    assert audit_rows(db)[-1][1:4] == ("resources.list", "user", "patient-1")


def test_list_arguments(client: TestClient, db: Database, auth: dict) -> None:
    data = seed(db, per_type=1)
    both = {"connection_id": data["a"], "external_id": "patient-1"}
    assert client.get("/api/resources", params=both, headers=auth).status_code == 400
    assert client.get("/api/resources", headers=auth).status_code == 400
    missing = client.get("/api/resources", params={"connection_id": "x"}, headers=auth)
    assert missing.status_code == 404
    nobody = client.get("/api/resources", params={"external_id": "nobody"}, headers=auth)
    assert nobody.status_code == 404
    bad = client.get(
        "/api/resources", params={"connection_id": data["a"], "cursor": "e30"}, headers=auth
    )
    assert bad.status_code == 400
    assert audit_rows(db) == []  # nothing was read


def test_get_one_resource_byte_for_byte(client: TestClient, db: Database, auth: dict) -> None:
    data = seed(db, per_type=1)
    for key in (data["a"], data["a_org"]):
        response = client.get(f"/api/resources/{key}/Patient/odd", headers=auth)
        assert response.status_code == 200
        assert response.content == ODD
        assert response.headers["content-type"] == "application/fhir+json"
    assert client.get(f"/api/resources/{data['a']}/Patient/none", headers=auth).status_code == 404
    assert client.get(f"/api/resources/{data['c']}/Patient/odd", headers=auth).status_code == 404
    assert client.get("/api/resources/x/Patient/odd", headers=auth).status_code == 404
    rows = audit_rows(db)
    assert rows == [
        ("tests", "resource.read", "resource", f"{data['a']}/Patient/odd", path)
        for path in (
            f"/api/resources/{data['a']}/Patient/odd",
            f"/api/resources/{data['a_org']}/Patient/odd",
        )
    ]


def test_ndjson_export_equals_stored(client: TestClient, db: Database, auth: dict) -> None:
    data = seed(db)
    stored = data["stored"]
    assert isinstance(stored, dict)
    response = client.get(
        "/api/resources/export", params={"connection_id": data["a"]}, headers=auth
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+ndjson"
    lines = response.content.split(b"\n")
    assert lines[-1] == b""
    assert sorted(lines[:-1]) == sorted(stored[data["a"]])
    user = client.get("/api/resources/export", params={"external_id": "patient-1"}, headers=auth)
    assert sorted(user.content.splitlines()) == sorted(stored[data["a"]] + stored[data["b"]])
    rows = audit_rows(db)
    assert [r[1:4] for r in rows] == [
        ("resources.export.ndjson", "connection", data["a"]),
        ("resources.export.ndjson", "user", "patient-1"),
    ]


def test_bundle_export_equals_stored(client: TestClient, db: Database, auth: dict) -> None:
    data = seed(db)
    stored = data["stored"]
    assert isinstance(stored, dict)
    response = client.get(
        "/api/resources/export",
        params={"connection_id": data["a"], "format": "bundle"},
        headers=auth,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    bundle = orjson.loads(response.content)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    resources = [entry["resource"] for entry in bundle["entry"]]
    expected = [orjson.loads(raw) for raw in stored[data["a"]]]
    key = lambda r: (r["resourceType"], r["id"])  # noqa: E731
    assert sorted(resources, key=key) == sorted(expected, key=key)
    assert ODD in response.content  # embedded byte for byte
    assert audit_rows(db)[0][1] == "resources.export.bundle"


def test_export_streams_in_batches(client: TestClient, db: Database, auth: dict) -> None:
    with db.session() as session:
        connection = make_connection(session, 1)
        raws = [fhir("Observation", f"o{n}") for n in range(2345)]
        for n, raw in enumerate(raws):
            make_resource(session, connection, "Observation", f"o{n}", raw)
        cid = connection.id
    response = client.get("/api/resources/export", params={"connection_id": cid}, headers=auth)
    assert sorted(response.content.splitlines()) == sorted(raws)
    bundle = client.get(
        "/api/resources/export", params={"connection_id": cid, "format": "bundle"}, headers=auth
    ).json()
    assert len(bundle["entry"]) == 2345


def test_export_arguments(client: TestClient, db: Database, auth: dict) -> None:
    data = seed(db, per_type=1)
    for params in ({}, {"connection_id": data["a"], "format": "xml"}, {"external_id": "nobody"}):
        response = client.get("/api/resources/export", params=params, headers=auth)
        assert response.status_code in (400, 404, 422), params
    empty_user = client.get(
        "/api/resources/export", params={"connection_id": data["c"]}, headers=auth
    )
    assert empty_user.status_code == 200
