"""The sources CLI and HTTP routes against the sandbox (real HTTP), on both databases."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path
from urllib.parse import urlencode

import pytest
from typer.testing import CliRunner

from ehi_bridge.app import create_api
from ehi_bridge.auth.service import create_api_token
from ehi_bridge.cli import app
from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.sources import service
from tests.integration.sources.conftest import Sandbox, authorize
from tests.smart_flow import consent
from tests.support import ehi_command

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def _env(settings: Settings, smart: Sandbox) -> dict[str, str]:
    return {
        "EHI_DATA_DIR": str(settings.data_dir),
        "EHI_DATABASE_URL": settings.resolved_database_url,
        "EHI_SMART_SANDBOX_URL": smart.url,
        "EHI_SOURCE_REDIRECT_URL": settings.source_redirect_uri(),
        "EHI_LOG_LEVEL": "WARNING",
    }


def test_cli_syncs_a_connection_and_pulls_once_to_ndjson(
    db: Database, settings: Settings, smart: Sandbox, tmp_path: Path
) -> None:
    patient = smart.patients()[0]
    connection_id = authorize(db, settings, "sandbox-athena", patient["id"])
    # The connection sync configures the process's logging: a real process, as users run it.
    env = {**os.environ, **_env(settings, smart)}
    synced = subprocess.run(
        ehi_command("sources", "sync", "--connection", connection_id),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert synced.returncode == 0, synced.stderr
    assert f"complete: {patient['resource_count']} resources" in synced.stdout
    unknown = subprocess.run(
        ehi_command("sources", "sync", "--connection", "nope"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    runner = CliRunner()

    token, _ = service.valid_access_token(db, settings, connection_id)
    out = tmp_path / "pull.ndjson"
    args = [
        "sources",
        "sync",
        "--base-url",
        f"{smart.url}/athena/fhir",
        "--token",
        token,
        "--patient",
        patient["id"],
        "--platform",
        "sandbox-athena",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args, env=_env(settings, smart))
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    keys = {(r["resourceType"], r["id"]) for r in map(json.loads, lines)}
    assert keys == smart.resources(patient["id"])

    bad = runner.invoke(app, [*args[:5], "nope", *args[6:]], env=_env(settings, smart))
    assert bad.exit_code == 1 and "unauthorized" in bad.output


def test_cli_lists_platforms_and_a_catalog_file(
    settings: Settings, smart: Sandbox, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        json.dumps(
            [
                {
                    "id": "st-elsewhere",
                    "name": "St Elsewhere",
                    "platform": "epic",
                    "fhir_base_url": "https://fhir.st-elsewhere.example/R4",
                }
            ]
        )
    )
    env = {**_env(settings, smart), "EHI_SOURCES_CATALOG_FILE": str(catalog)}
    result = CliRunner().invoke(app, ["sources", "list"], env=env)
    assert result.exit_code == 0, result.output
    assert "sandbox-cerner" in result.output and "st-elsewhere" in result.output


@pytest.fixture
def client(db: Database, settings: Settings) -> TestClient:
    return TestClient(create_api(settings, db))


def test_jwks_is_public_and_has_no_private_parts(
    client: TestClient, db: Database, settings: Settings
) -> None:
    answer = client.get("/.well-known/jwks.json")
    assert answer.status_code == 200
    assert answer.json() == service.jwks(db, settings)
    assert all("d" not in key for key in answer.json()["keys"])


def test_authorize_and_callback_over_http(
    client: TestClient, db: Database, settings: Settings, smart: Sandbox
) -> None:
    assert (
        client.post("/api/sources/authorize", json={"platform": "sandbox-epic"}).status_code == 401
    )
    with db.session() as session:
        _, plaintext = create_api_token(session, "sources-test")
    auth = {"Authorization": f"Bearer {plaintext}"}
    assert client.get("/api/sources", headers=auth).json()["platforms"]
    bad = client.post("/api/sources/authorize", json={"platform": "nope"}, headers=auth)
    assert bad.status_code == 400 and "unknown platform" in bad.json()["detail"]
    bad = client.post(
        "/api/sources/authorize",
        json={"platform": "generic", "fhir_base_url": "javascript:alert(1)"},
        headers=auth,
    )
    assert bad.status_code == 400
    started = client.post(
        "/api/sources/authorize",
        json={"platform": "sandbox-epic", "external_id": "user-7"},
        headers=auth,
    )
    assert started.status_code == 200
    redirect = consent(started.json()["authorize_url"])
    done = client.get(f"/sources/callback?{urlencode(redirect)}")
    assert done.status_code == 200 and "Connected" in done.text
    again = client.get(f"/sources/callback?{urlencode(redirect)}")  # the state is used up
    assert again.status_code == 400
    denied = client.get("/sources/callback?state=x&error=access_denied")
    assert denied.status_code == 400
    with db.read_session() as session:
        connection = session.query(Connection).filter_by(external_id="user-7").one()
        assert (connection.source, connection.platform_type) == ("smart", "sandbox-epic")
        export = session.query(Export).filter_by(connection_id=connection.id).one()
        assert (export.source, export.status) == (
            "smart",
            "downloading",
        )  # queued for the background
