"""The whole product in a browser: ``ehi-bridge serve`` and the Fasten simulator as
subprocesses (fixture ``live_stack`` from ``tests/e2e/conftest.py``), real background work.

What this test needs from ``live_stack``: ``base_url`` (the service), ``username`` and
``password`` (a dashboard user), a connect-link secret and ``EHI_STITCH_JS_URL`` pointing at
the simulator's ``/stitch.js`` in the service's settings.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser.conftest import recording_connections_available, save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WAIT_MS = 90_000


def test_patient_connects_and_operator_follows_through(
    page: Any, live_stack: Any, tmp_path: Path
) -> None:
    stack = live_stack
    base = stack.base_url
    external_id = f"browser-{uuid.uuid4().hex[:8]}"

    # The operator logs in and makes a connect link for a new patient.
    page.goto(f"{base}/dashboard")
    assert "/dashboard/login" in page.url
    page.fill("input[name=username]", stack.username)
    page.fill("input[name=password]", stack.password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/dashboard/?$"))
    page.goto(f"{base}/dashboard/connect-link")
    page.fill("input[name=external_id]", external_id)
    page.click("#make-link")
    link = page.locator("#connect-link").get_attribute("href")
    assert link

    # The patient connects through the simulator's widget and watches the records arrive.
    patient = page.context.new_page()
    patient.goto(link)
    patient.locator("text=No connections yet.").wait_for()
    patient.click("fasten-stitch-element button.fasten-stitch-button")
    # The simulator's modal: first health system and patient, then "Log in".
    patient.click("fasten-stitch-element button.fasten-sim-login")
    patient.locator("#connections .connection-row").first.wait_for(timeout=WAIT_MS)
    patient.locator(
        "#connections .connection-row", has_text=re.compile(r"complete|partial")
    ).first.wait_for(timeout=WAIT_MS)
    if recording_connections_available():
        # The page's POST /api/connect/complete was accepted, not only the webhook.
        assert "Connected." in patient.locator("#widget-status").inner_text()
    save_screenshot(patient, tmp_path, "full-stack-connect.png")
    patient.close()

    # The connection appears in the dashboard; its records open.
    page.goto(f"{base}/dashboard/connections?q={external_id}")
    page.locator("#connection-rows tr a").first.click()
    page.wait_for_url(re.compile(r"/dashboard/connections/[^/]+$"))
    page.locator("a.view-records").first.click()
    page.locator("#records details.resource").first.wait_for()
    org_connection_id = page.locator("h1 .mono").inner_text()

    # Replay one of its events.
    page.goto(f"{base}/dashboard/events?org_connection_id={org_connection_id}")
    first = page.locator("table.events tbody tr").first
    row_id = first.get_attribute("id")
    first.locator("button.replay").click()
    page.locator(f"#{row_id} td:nth-child(9)", has_text="1").wait_for()

    save_screenshot(page, tmp_path, "full-stack-events.png")
    page.goto(f"{base}/dashboard")
    save_screenshot(page, tmp_path, "full-stack-overview.png")

    # Log out, and be refused.
    page.click("#logout")
    page.wait_for_url(re.compile(r"/dashboard/login"))
    page.goto(f"{base}/dashboard/connections")
    assert "/dashboard/login" in page.url
