"""The dashboard and the connect page in real headless Chromium (in-process server)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ehi_bridge.auth.models import AuditLog
from ehi_bridge.connections.models import Connection
from ehi_bridge.webhooks.models import InboxEvent
from tests.e2e.browser.conftest import (
    LiveDashboard,
    recording_connections_available,
    save_screenshot,
)
from tests.integration.dashboard.helpers import PASSWORD, USERNAME

pytestmark = pytest.mark.browser


def log_in(page: Any, base_url: str, username: str = USERNAME, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/dashboard")
    assert "/dashboard/login" in page.url  # refused before logging in
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/dashboard/?$"))


def test_operator_journey(page: Any, live_dashboard: LiveDashboard, tmp_path: Path) -> None:
    base = live_dashboard.base_url
    seeded = live_dashboard.seeded
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status == 404 else None)

    # A wrong password is refused.
    page.goto(f"{base}/dashboard/login")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "Wrong username or password."

    log_in(page, base)
    # Overview: tiles and the four charts drawn.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.chart canvas')]"
        ".every(c => c.width > 0 && Chart.getChart(c))"
    )
    assert page.locator(".chart canvas").count() == 4
    assert page.locator(".tile .num").first.inner_text() == "2"
    save_screenshot(page, tmp_path, "overview.png")

    # Open the seeded connection and its records (audited).
    page.goto(f"{base}/dashboard/connections/{seeded.connection_id}")
    assert page.locator("h4", has_text="Lines not ingested").count() == 1
    page.locator("tr", has_text="Observation").locator("a.view-records").click()
    page.locator("#records details.resource").first.wait_for()
    assert page.locator("#records details.resource").count() == 2
    page.locator("#records details.resource summary").first.click()
    save_screenshot(page, tmp_path, "connection.png")
    with live_dashboard.db.read_session() as session:
        actions = list(
            session.scalars(select(AuditLog.action).where(AuditLog.actor_name == USERNAME))
        )
    assert "dashboard.records.view" in actions

    # Replay the parked event from the event log (htmx POST with the CSRF header).
    page.goto(f"{base}/dashboard/events?status=parked")
    event_row = page.locator(f"#event-{seeded.parked_event_id}")
    event_row.locator("button.replay").click()
    page.locator(f"#event-{seeded.parked_event_id} .badge", has_text="received").wait_for()
    with live_dashboard.db.read_session() as session:
        event = session.get(InboxEvent, seeded.parked_event_id)
        assert event is not None and event.replays == 1
    save_screenshot(page, tmp_path, "events.png")
    page.goto(f"{base}/dashboard/failures")
    save_screenshot(page, tmp_path, "failures.png")

    # Log out, and be refused.
    page.click("#logout")
    page.wait_for_url(re.compile(r"/dashboard/login"))
    page.goto(f"{base}/dashboard/events")
    assert "/dashboard/login" in page.url
    assert page.locator("input[name=password]").count() == 1
    assert errors == []
    assert failed == []


def test_patient_connects_from_a_link(
    page: Any, live_dashboard: LiveDashboard, tmp_path: Path
) -> None:
    if not recording_connections_available():
        pytest.skip("POST /api/connect/complete needs connections.service.record_widget_complete")
    base = live_dashboard.base_url
    log_in(page, base)
    # Make a connect link for a new patient, and connect from it.
    page.click("text=Connect link")
    page.fill("input[name=external_id]", "browser-patient")
    page.click("#make-link")
    link = page.locator("#connect-link").get_attribute("href")
    assert link and "/connect?token=" in link
    patient = page.context.new_page()
    patient.goto(link)
    patient.locator("text=No connections yet.").wait_for()
    patient.click("fasten-stitch-element button.fasten-stitch-button")
    row = patient.locator("#connections .connection-row")
    row.first.wait_for()
    assert "epic" in row.first.inner_text()
    assert "Connected." in patient.locator("#widget-status").inner_text()
    save_screenshot(patient, tmp_path, "connect.png")
    patient.close()
    with live_dashboard.db.read_session() as session:
        created = session.scalars(
            select(Connection).where(Connection.external_id == "browser-patient")
        ).one()
    assert created.org_connection_id

    # The new connection appears in the connections table (htmx search).
    page.goto(f"{base}/dashboard/connections")
    page.fill("input[name=q]", "browser-patient")
    page.click("text=Search")
    page.wait_for_url(re.compile(r"q=browser-patient"))
    page.locator("#connection-rows tr", has_text=created.org_connection_id).wait_for()
    assert page.locator("#connection-rows tr").count() == 1


def test_expired_link_shows_403_page(page: Any, live_dashboard: LiveDashboard) -> None:
    response = page.goto(f"{live_dashboard.base_url}/connect?token=not-a-valid-token")
    assert response is not None and response.status == 403
    assert page.locator("h1").inner_text() == "This link is not valid"


def test_connect_page_forwards_widget_complete_with_the_link_token(
    page: Any, live_dashboard: LiveDashboard
) -> None:
    import json

    from ehi_bridge.auth.connect_links import make_connect_token

    token = make_connect_token(live_dashboard.settings, "route-patient", ttl=600)
    seen: list[dict[str, Any]] = []

    def complete(route: Any) -> None:
        request = route.request
        seen.append(
            {
                "body": json.loads(request.post_data or "{}"),
                "token": request.headers.get("x-connect-token"),
                "cookie": request.headers.get("cookie"),
            }
        )
        route.fulfill(status=200, content_type="application/json", body="{}")

    page.route("**/api/connect/complete", complete)
    page.goto(f"{live_dashboard.base_url}/connect?token={token}")
    page.locator("text=No connections yet.").wait_for()
    page.click("fasten-stitch-element button.fasten-stitch-button")
    page.locator("#widget-status", has_text="Connected.").wait_for()
    assert len(seen) == 1
    body = seen[0]["body"]
    assert body["org_connection_id"]
    assert body["platform_type"] == "epic"
    assert body["api_mode"] == "test"
    assert {"endpoint_id", "brand_id", "portal_id"} <= set(body)
    assert seen[0]["token"] == token
    assert seen[0]["cookie"] is None


@pytest.mark.parametrize("width", [1280, 1024])
def test_connection_page_has_no_horizontal_overflow(
    browser: Any, live_dashboard: LiveDashboard, width: int
) -> None:
    """The data-quality report is tables that wrap: the page is no wider than the window
    (it was 2,044 px at a 1,400 px window with the raw JSON)."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    try:
        tab = context.new_page()
        log_in(tab, live_dashboard.base_url)
        tab.goto(
            f"{live_dashboard.base_url}/dashboard/connections/{live_dashboard.seeded.connection_id}"
        )
        tab.wait_for_selector("table.report-table")
        scroll_width = tab.evaluate("() => document.documentElement.scrollWidth")
        assert scroll_width <= width
        assert tab.locator("h4", has_text="Lines not ingested").count() >= 1
    finally:
        context.close()


def test_connect_link_has_a_copy_button(browser: Any, live_dashboard: LiveDashboard) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    try:
        tab = context.new_page()
        log_in(tab, live_dashboard.base_url)
        tab.goto(f"{live_dashboard.base_url}/dashboard/connect-link")
        tab.fill("input[name=external_id]", "patient-copy")
        tab.click("#make-link")
        link = tab.locator("#connect-link").get_attribute("href")
        tab.click("#copy-link")
        # The label changes once the clipboard write resolves (and back after 2 s).
        tab.wait_for_function("() => document.querySelector('#copy-link').textContent === 'Copied'")
        assert tab.evaluate("() => navigator.clipboard.readText()") == link
    finally:
        context.close()
