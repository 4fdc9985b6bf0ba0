"""The request guard: no body is read before the token is checked, bodies are capped,
errors never echo the input, the OpenAPI documents are closed by default, HSTS on https."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ehi_bridge.app import create_api
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from tests.integration.api.factories import TestClient, test_settings

MIB = 1024 * 1024


class CountingBody:
    """A 50 MiB request body, streamed in 1 MiB chunks, counting what the server pulled."""

    def __init__(self, chunks: int = 50) -> None:
        self.chunks = chunks
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            yield b'{"ids":[' + b"1," * (MIB // 2 - 8) + b"1]}"[: MIB - (MIB // 2 - 8) * 2]


async def _post(settings: Settings, db: Database, path: str, **kw: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_api(settings, db))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, **kw)  # type: ignore[arg-type]


def post(settings: Settings, db: Database, path: str, **kw: object) -> httpx.Response:
    return asyncio.run(_post(settings, db, path, **kw))


def test_50_mib_to_replay_without_a_token_is_401_before_the_body_is_read(
    settings: Settings, db: Database
) -> None:
    body = CountingBody()
    response = post(settings, db, "/api/events/replay", content=body)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert body.pulled == 0


def test_50_mib_to_replay_with_a_token_is_413_after_the_cap(
    settings: Settings, db: Database, auth: dict[str, str]
) -> None:
    body = CountingBody()
    response = post(settings, db, "/api/events/replay", content=body, headers=auth)
    assert response.status_code == 413
    assert body.pulled <= 1 + settings.api_max_body_bytes // MIB


def test_50_mib_to_connect_complete_is_refused_early_without_echo(
    settings: Settings, db: Database
) -> None:
    body = CountingBody()
    response = post(settings, db, "/api/connect/complete", content=body)
    assert response.status_code == 413
    assert body.pulled <= 1
    assert len(response.content) < 200
    declared = post(
        settings,
        db,
        "/api/connect/complete",
        content=b"x" * 100,
        headers={"content-length": str(50 * MIB)},
    )
    assert declared.status_code == 413


def test_validation_errors_do_not_echo_the_input(settings: Settings, db: Database) -> None:
    marker = "marker-" + uuid.uuid4().hex
    response = post(
        settings,
        db,
        "/api/connect/complete",
        json={"org_connection_id": {"nested": marker}, "external_id": [marker]},
    )
    assert 400 <= response.status_code < 500
    assert marker not in response.text


def test_openapi_and_docs_need_a_token_by_default(
    database_url: str, tmp_path: Path, db: Database, auth: dict[str, str]
) -> None:
    settings = test_settings(database_url, tmp_path, public_api_docs=False)
    with TestClient(create_api(settings, db)) as client:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert client.get(path).status_code == 401, path
        assert client.get("/openapi.json", headers=auth).status_code == 200


@pytest.mark.parametrize("base", ["https://ehi.example.org", "http://127.0.0.1:8000"])
def test_hsts_only_when_the_base_url_is_https(
    base: str, database_url: str, tmp_path: Path, db: Database
) -> None:
    settings = test_settings(database_url, tmp_path, public_base_url=base)
    with TestClient(create_api(settings, db)) as client:
        header = client.get("/healthz").headers.get("strict-transport-security")
    assert (header is not None) == base.startswith("https://")


def test_a_dashboard_post_without_a_session_is_401_before_the_body_is_read(
    settings: Settings, db: Database
) -> None:
    body = CountingBody()
    response = post(settings, db, "/dashboard/connect-link", content=body)
    assert response.status_code == 401
    assert body.pulled == 0
