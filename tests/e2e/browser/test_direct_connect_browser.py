"""A patient connects their hospital directly, in headless Chromium, against the real
``ehi-bridge serve`` (its background runtime runs the sync) and the simulator's SMART
sandbox: a signed link made through the API, the catalog search, the EHR's consent page,
the callback, the progress on the connect page; the operator then sees the connection in
the dashboard, and the API serves its records byte for byte as the sandbox does."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehi_bridge.config import Settings
from ehi_bridge.db.migrate import upgrade
from ehi_bridge.simulator.smart.server import SmartSandbox
from ehi_bridge.sources import oauth
from ehi_bridge.sources import repository as sources_repo
from ehi_bridge.sources import service as sources
from ehi_bridge.sources.definitions import definitions
from tests.e2e.browser.conftest import save_screenshot
from tests.smart_flow import consent

pytestmark = [pytest.mark.browser]

WAIT_MS = 60_000
INSTITUTION = "sandbox-general"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only here (the connect, API and dashboard integration tests run both)."""
    url = f"sqlite:///{tmp_path / 'ehi.sqlite3'}"
    upgrade(url)
    return url


@pytest.fixture
def sandbox() -> Iterator[SmartSandbox]:
    with SmartSandbox() as box:
        yield box


@pytest.fixture
def stack_env(base_env: dict[str, str], sandbox: SmartSandbox, tmp_path: Path) -> dict[str, str]:
    catalog = tmp_path / "catalog.json"
    entry = {
        "id": INSTITUTION,
        "name": "Sandbox General Hospital",
        "platform": "sandbox-generic",
        "fhir_base_url": sandbox.fhir_base("generic"),
    }
    catalog.write_text(json.dumps([entry]))
    return {"EHI_SMART_SANDBOX_URL": sandbox.url, "EHI_SOURCES_CATALOG_FILE": str(catalog)}


def _sandbox_token(sandbox: SmartSandbox, patient_id: str) -> str:
    """Our own read token for the same patient, to fetch what the sandbox serves."""
    platform = definitions().platform("sandbox-generic")
    base = sandbox.fhir_base("generic")
    creds = oauth.ClientCredentials("ehi-public", "none")
    endpoints = oauth.discover(base, platform)
    state, verifier = oauth.new_state(), oauth.new_code_verifier()
    redirect = "http://127.0.0.1:9/cb"
    url = oauth.authorize_url(platform, creds, endpoints, base, redirect, state, verifier)
    answer = consent(url, patient_id)
    return oauth.exchange_code(
        creds, endpoints.token, answer["code"], redirect, verifier
    ).access_token


def test_patient_connects_directly_and_records_arrive(
    page: Any, live_stack: Any, sandbox: SmartSandbox, tmp_path: Path
) -> None:
    stack = live_stack
    base = stack.base_url
    external_id = f"direct-{uuid.uuid4().hex[:8]}"
    patients = httpx.get(f"{sandbox.url}/_smart/patients").json()
    patient_id = min(patients, key=lambda p: p["resource_count"])["id"]

    with stack.api() as api:
        made = api.post("/api/sources/connect-links", json={"external_id": external_id})
        assert made.status_code == 201, made.text
        link = made.json()["url"]
    assert link.startswith(f"{base}/connect?token=") and link.endswith("#direct")

    # The patient searches the catalog and connects in a new window.
    page.goto(link)
    page.locator("#connection-status", has_text="No connections yet.").wait_for()
    page.fill("#institution-search", "general")
    button = page.locator(f"#direct-{INSTITUTION}")
    button.wait_for()
    with page.expect_popup() as opened:
        button.click()
    ehr = opened.value
    ehr.wait_for_url(re.compile(r"/generic/oauth/authorize"))
    ehr.select_option("#patient", patient_id)
    ehr.click("#allow")
    ehr.wait_for_url(re.compile(r"/sources/callback"))
    assert "Connected" in ehr.locator("h1").inner_text()
    ehr.close()

    # Progress on the connect page, as with Fasten's widget.
    page.locator("#connections .connection-row").first.wait_for(timeout=WAIT_MS)
    page.locator("#connections .connection-row", has_text="complete").wait_for(timeout=WAIT_MS)
    assert "sandbox-generic" in page.locator("#connections").inner_text()
    save_screenshot(page, tmp_path, "direct-connect.png")

    # The operator sees it in the dashboard, with its records.
    page.goto(f"{base}/dashboard")
    page.fill("input[name=username]", stack.username)
    page.fill("input[name=password]", stack.password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/dashboard/?$"))
    page.goto(f"{base}/dashboard/connections?q={external_id}")
    row = page.locator("#connection-rows tr.s-smart").first
    assert row.locator("td.source").inner_text() == "direct"
    assert row.locator("td.last-sync").inner_text() not in ("—", "syncing…")
    assert row.locator("td.token-expiry").inner_text() != "—"
    assert row.locator("td.failure").inner_text() == ""
    row.locator("a").first.click()
    page.wait_for_url(re.compile(r"/dashboard/connections/[^/]+$"))
    page.locator("a.view-records").first.click()
    page.locator("#records details.resource").first.wait_for()
    save_screenshot(page, tmp_path, "direct-dashboard.png")

    # A re-sync from the list (CSRF-protected form) starts and finishes.
    page.goto(f"{base}/dashboard/connections?q={external_id}")
    page.locator("#connection-rows tr.s-smart button.resync").click()
    page.locator(".notice", has_text="Sync started.").wait_for()

    # Through the API: the connection, and its records byte for byte as the sandbox serves.
    expected = {
        tuple(x) for x in httpx.get(f"{sandbox.url}/_smart/patients/{patient_id}/resources").json()
    }
    with stack.api() as api:
        smart = api.get("/api/connections", params={"source": "smart"}).json()["items"]
        mine = [c for c in smart if c["external_id"] == external_id]
        assert len(mine) == 1 and mine[0]["source"] == "smart"
        assert all(c["source"] == "smart" for c in smart)
        user = api.get(f"/api/users/{external_id}").json()
        assert sum(user["resource_counts"].values()) == len(expected)
        lines = api.get(
            "/api/resources/export", params={"external_id": external_id, "format": "ndjson"}
        ).content.splitlines()
    stored = {(json.loads(x)["resourceType"], json.loads(x)["id"]): x for x in lines}
    assert set(stored) == expected
    token = _sandbox_token(sandbox, patient_id)
    fhir = sandbox.fhir_base("generic")
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=15) as http:
        for (rtype, rid), raw in stored.items():
            served = http.get(f"{fhir}/{rtype}/{rid}", headers={"Accept": "application/fhir+json"})
            assert served.status_code == 200 and served.content == raw, (rtype, rid)

    # The service never logged the tokens it holds (decrypted here from its database).
    cid = mine[0]["id"]
    settings = Settings(database_url=stack.env["EHI_DATABASE_URL"])
    keys = sources.source_keys(stack.db, settings)
    with stack.db.read_session() as session:
        grant = sources_repo.grant(session, cid)
        assert grant is not None
        access = keys.cipher.decrypt(grant.access_token, f"access:{cid}")
        refresh = keys.cipher.decrypt(grant.refresh_token, f"refresh:{cid}")
    assert access and refresh
    log = (tmp_path / "service.log").read_text()
    assert cid in log  # the log is there and tells about this connection
    assert access not in log and refresh not in log
