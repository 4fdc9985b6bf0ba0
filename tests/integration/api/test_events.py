from __future__ import annotations

from datetime import timedelta

import orjson
from sqlalchemy import select

from ehi_bridge.auth.models import AuditLog
from ehi_bridge.db.engine import Database
from ehi_bridge.webhooks.models import InboxEvent
from tests.integration.api.factories import T0, TestClient, make_event
from tests.integration.api.test_connections import collect


def seed_events(db: Database) -> list[int]:
    with db.session() as session:
        return [
            make_event(
                session,
                n,
                event_type="webhook.test" if n % 4 == 0 else "patient.ehi_export_success",
                status="parked" if n % 3 == 0 else "applied",
                api_mode="live" if n % 2 else "test",
                received_at=T0 + timedelta(hours=n),
            ).id
            for n in range(12)
        ]


def test_list_filters_and_pages(client: TestClient, db: Database, auth: dict) -> None:
    ids = seed_events(db)
    items = collect(client, auth, "/api/events", limit=5)
    assert [e["id"] for e in items] == list(reversed(ids))
    assert "body" not in items[0] and "envelope" not in items[0]
    assert {e["type"] for e in collect(client, auth, "/api/events", type="webhook.test")} == {
        "webhook.test"
    }
    assert len(collect(client, auth, "/api/events", status="parked", limit=2)) == 4
    assert len(collect(client, auth, "/api/events", mode="live")) == 6
    window = collect(
        client,
        auth,
        "/api/events",
        since=(T0 + timedelta(hours=3)).isoformat(),
        until=(T0 + timedelta(hours=6)).isoformat(),
    )
    assert [e["id"] for e in window] == [ids[5], ids[4], ids[3]]
    naive = collect(client, auth, "/api/events", since="2026-01-01T10:00:00")
    assert [e["id"] for e in naive] == [ids[11], ids[10]]
    assert client.get("/api/events?status=bogus", headers=auth).status_code == 422
    assert client.get("/api/events?since=yesterday", headers=auth).status_code == 422


def test_detail_returns_envelope_and_is_audited(
    client: TestClient, db: Database, auth: dict
) -> None:
    with db.session() as session:
        event = make_event(session, 1, org_connection_id="org-1", last_error="boom")
        event_id, body = event.id, event.body
    response = client.get(f"/api/events/{event_id}", headers=auth)
    assert response.status_code == 200
    detail = response.json()
    assert detail["envelope"] == orjson.loads(body)
    assert detail["last_error"] == "boom"
    assert detail["type"] == "patient.connection_success"
    with db.read_session() as session:
        rows = session.scalars(select(AuditLog)).all()
        assert [
            (r.actor_kind, r.actor_name, r.action, r.target_type, r.target_id) for r in rows
        ] == [("token", "tests", "event.read", "event", str(event_id))]
        assert rows[0].path == f"/api/events/{event_id}"
    assert client.get("/api/events/999999", headers=auth).status_code == 404
    assert client.get("/api/events/0", headers=auth).status_code == 422
    assert client.get(f"/api/events/{2**64}", headers=auth).status_code == 422
    assert client.get("/api/events/abc", headers=auth).status_code == 422


def test_non_json_body_gives_null_envelope(client: TestClient, db: Database, auth: dict) -> None:
    with db.session() as session:
        event_id = make_event(session, 1, body=b"not json").id
    assert client.get(f"/api/events/{event_id}", headers=auth).json()["envelope"] is None


def status_of(db: Database, event_id: int) -> tuple[str, int]:
    with db.read_session() as session:
        event = session.get(InboxEvent, event_id)
        assert event is not None
        return event.status, event.replays


def test_replay_one(client: TestClient, db: Database, auth: dict) -> None:
    with db.session() as session:
        event_id = make_event(session, 1, status="parked").id
    response = client.post(f"/api/events/{event_id}/replay", headers=auth)
    assert response.status_code == 200, response.text
    assert response.json() == {"requested": 1, "replayed": 1}
    assert status_of(db, event_id) == ("received", 1)
    assert client.post("/api/events/424242/replay", headers=auth).status_code == 404


def test_replay_by_ids_and_all_parked(client: TestClient, db: Database, auth: dict) -> None:
    ids = seed_events(db)
    parked = [i for n, i in enumerate(ids) if n % 3 == 0]
    response = client.post("/api/events/replay", json={"ids": [ids[1], ids[1]]}, headers=auth)
    assert response.json() == {"requested": 1, "replayed": 1}
    assert status_of(db, ids[1]) == ("received", 1)
    response = client.post("/api/events/replay", json={"status": "parked"}, headers=auth)
    assert response.status_code == 200
    assert response.json() == {"requested": len(parked), "replayed": len(parked)}
    assert all(status_of(db, i) == ("received", 1) for i in parked)
    for bad in ({}, {"ids": [1], "status": "parked"}, {"status": "applied"}, {"ids": [0]}):
        assert client.post("/api/events/replay", json=bad, headers=auth).status_code == 422
    empty = client.post("/api/events/replay", json={"ids": []}, headers=auth)
    assert empty.json() == {"requested": 0, "replayed": 0}
