from __future__ import annotations

from ehi_bridge.auth.models import ApiToken
from ehi_bridge.db.engine import Database
from tests.integration.api.factories import TestClient


def test_docs_and_complete_schema(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiToken"]["scheme"] == "bearer"
    checked = 0
    for path, methods in schema["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in methods.items():
            success = {code: r for code, r in operation["responses"].items() if code[0] == "2"}
            assert success, (method, path)
            for response in success.values():
                content = response.get("content", {})
                assert content, (method, path)
                assert all(media.get("schema") for media in content.values()), (method, path)
            assert "401" in operation["responses"], (method, path)
            assert operation.get("security"), (method, path)
            checked += 1
    assert checked >= 15


def test_requests_record_last_used(client: TestClient, db: Database, auth: dict) -> None:
    with db.read_session() as session:
        token = session.query(ApiToken).one()
        assert token.last_used_at is None
    assert client.get("/api/events", headers=auth).status_code == 200
    with db.read_session() as session:
        first = session.query(ApiToken).one().last_used_at
    assert first is not None
    assert client.get("/api/events", headers=auth).status_code == 200
    with db.read_session() as session:
        assert session.query(ApiToken).one().last_used_at == first  # not rewritten within a minute
