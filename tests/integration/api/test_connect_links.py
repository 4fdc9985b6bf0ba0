"""`POST /api/connect-links` and `ehi-bridge connect-link create`: signed, expiring links to
the connect page, made without the dashboard."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ehi_bridge.app import create_api
from ehi_bridge.auth.connect_links import read_connect_token
from ehi_bridge.auth.models import AuditLog
from ehi_bridge.cli import app
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from tests.integration.api.factories import CONNECT_SECRET, TestClient, test_settings


def _token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def test_create_link_signed_for_the_user_and_audited(
    client: TestClient, auth: dict[str, str], settings: Settings, db: Database
) -> None:
    before = datetime.now(UTC)
    response = client.post(
        "/api/connect-links", json={"external_id": "user-7", "ttl_hours": 2}, headers=auth
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["external_id"] == "user-7"
    assert body["url"].startswith(settings.public_base_url.rstrip("/") + "/connect?token=")
    assert read_connect_token(settings, _token_of(body["url"])) == "user-7"
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(hours=2) <= expires <= datetime.now(UTC) + timedelta(hours=2)
    assert (
        client.get(urlsplit(body["url"]).path + "?" + urlsplit(body["url"]).query).status_code
        == 200
    )
    with db.read_session() as session:
        audit = session.scalars(
            select(AuditLog).where(AuditLog.action == "connect_link.create")
        ).one()
    assert (audit.actor_kind, audit.target_id) == ("token", "user-7")


def test_create_link_needs_a_token_and_a_valid_body(
    client: TestClient, auth: dict[str, str]
) -> None:
    assert client.post("/api/connect-links", json={"external_id": "u"}).status_code == 401
    for bad in ({"external_id": ""}, {"external_id": "u", "ttl_hours": 0}, {}):
        assert client.post("/api/connect-links", json=bad, headers=auth).status_code == 422


def test_without_a_secret_the_answer_is_503(
    database_url: str, tmp_path: Path, db: Database, auth: dict[str, str]
) -> None:
    settings = test_settings(database_url, tmp_path).model_copy(update={"connect_link_secret": []})
    with TestClient(create_api(settings, db)) as client:
        response = client.post("/api/connect-links", json={"external_id": "u"}, headers=auth)
    assert response.status_code == 503
    assert "EHI_CONNECT_LINK_SECRET" in response.json()["detail"]


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("EHI_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_cli_prints_a_link(cli: CliRunner, monkeypatch: pytest.MonkeyPatch, db: Database) -> None:
    monkeypatch.setenv("EHI_CONNECT_LINK_SECRET", CONNECT_SECRET)
    monkeypatch.setenv("EHI_PUBLIC_BASE_URL", "https://bridge.example.org")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result = cli.invoke(app, ["connect-link", "create", "--external-id", "user-9"])
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert url.startswith("https://bridge.example.org/connect?token=")
    settings = Settings(connect_link_secret=CONNECT_SECRET)  # type: ignore[arg-type]
    assert read_connect_token(settings, _token_of(url)) == "user-9"
    with db.read_session() as session:
        actions = session.scalars(select(AuditLog.action)).all()
    assert actions == ["connect_link.create"]


def test_cli_without_a_secret_is_one_line(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EHI_CONNECT_LINK_SECRET", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result = cli.invoke(app, ["connect-link", "create", "--external-id", "user-9"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: EHI_CONNECT_LINK_SECRET is not set: connect links cannot be made"
    ]
