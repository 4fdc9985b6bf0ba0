"""Every /api operation answers 401 with ``WWW-Authenticate: Bearer`` without a live token."""

from __future__ import annotations

import re

from ehi_bridge.auth.service import revoke_api_token
from ehi_bridge.db.engine import Database
from tests.integration.api.factories import TestClient


def api_operations(client: TestClient) -> list[tuple[str, str]]:
    schema = client.get("/openapi.json").json()
    operations = []
    for path, methods in schema["paths"].items():
        if not path.startswith("/api/"):
            continue
        concrete = re.sub(r"\{[a-z_]*id\}", "1", path)
        concrete = re.sub(r"\{[a-z_]+\}", "Patient", concrete)
        operations.extend((method.upper(), concrete) for method in methods)
    return operations


BODIES = {
    "/api/exports": {"connection_id": "c1"},
    "/api/events/replay": {"ids": [1]},
    "/api/connect/complete": {"org_connection_id": "org-1"},
}


def test_every_operation_is_listed(client: TestClient) -> None:
    operations = set(api_operations(client))
    assert ("GET", "/api/resources/export") in operations
    assert ("POST", "/api/events/1/replay") in operations
    assert len(operations) >= 15


def test_missing_token_is_401_everywhere(client: TestClient) -> None:
    for method, path in api_operations(client):
        response = client.request(method, path, json=BODIES.get(path))
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer", (method, path)
        assert "detail" in response.json()


def test_wrong_scheme_and_unknown_token_are_401(client: TestClient, token: str) -> None:
    for headers in (
        {"Authorization": f"Basic {token}"},
        {"Authorization": "Bearer ehib_not-a-token"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": "Bearer "},
    ):
        for method, path in api_operations(client):
            response = client.request(method, path, json=BODIES.get(path), headers=headers)
            assert response.status_code == 401, (method, path, headers)


def test_revoked_token_is_401(client: TestClient, db: Database, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/connections", headers=headers).status_code == 200
    with db.session() as session:
        from ehi_bridge.auth.service import find_token

        found = find_token(session, token)
        assert found is not None
        revoke_api_token(session, found.id)
    response = client.get("/api/connections", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
