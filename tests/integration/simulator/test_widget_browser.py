"""The widget stand-in in headless Chromium: a page on another origin embeds the element,
the patient picks a health system and logs in, the page sees Stitch's eventBus events."""

from __future__ import annotations

import html
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from ehi_bridge.simulator import SimulatorServer
from tests.integration.simulator.conftest import Receiver, wait_until
from tests.support import free_port, skip_or_fail

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not executable:
        skip_or_fail("headless Chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the playwright Python package is not installed")
        raise
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(executable),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
            headless=True,
        )
        try:
            yield chromium
        finally:
            chromium.close()


class AppPage:
    """The app's page, served from its own origin (``localhost`` on another port)."""

    def __init__(self) -> None:
        self.html = ""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = self.html.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def app_page() -> Iterator[tuple[AppPage, str]]:
    page = AppPage()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(page, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    yield page, f"http://localhost:{port}/connect"
    server.should_exit = True
    thread.join(timeout=10)


def _host(script_url: str, public_id: str, external_id: str) -> str:
    return f"""<!doctype html><html><head><script src="{html.escape(script_url)}"></script></head>
<body><fasten-stitch-element id="stitch" public-id="{public_id}" external-id="{external_id}">
</fasten-stitch-element>
<script>
window.events = [];
document.getElementById("stitch").addEventListener("eventBus", function (e) {{
  window.events.push(e.detail);
}});
</script></body></html>"""


def test_patient_logs_in_through_the_modal(
    browser: Any,
    simulator: SimulatorServer,
    receiver: Receiver,
    app_page: tuple[AppPage, str],
) -> None:
    page_app, url = app_page
    page_app.html = _host(f"{simulator.api_url}/stitch.js", "public_test_sim", "user-99")
    page = browser.new_page()
    try:
        page.goto(url)
        page.click("fasten-stitch-element button.fasten-stitch-button")
        page.locator(".fasten-sim-modal").wait_for()
        # A backdrop covers the whole window behind the dialog; its buttons do not touch.
        cover = page.evaluate(
            "() => { const r = document.querySelector('.fasten-sim-backdrop')"
            ".getBoundingClientRect(); return [r.width, r.height, innerWidth, innerHeight]; }"
        )
        assert cover[0] == cover[2] and cover[1] == cover[3]
        login_box = page.locator("button.fasten-sim-login").bounding_box()
        cancel_box = page.locator("button.fasten-sim-cancel").bounding_box()
        assert login_box and cancel_box
        gap = login_box["x"] - (cancel_box["x"] + cancel_box["width"])
        assert gap >= 8
        page.select_option("select[name=brand]", "brand-cerner")
        page.select_option("select[name=patient]", "5")
        page.click("button.fasten-sim-login")
        page.wait_for_function(
            "window.events.some(e => e.event_type === 'widget.complete')", timeout=10_000
        )
        events = page.evaluate("window.events")
        assert page.locator(".fasten-sim-modal").count() == 0
    finally:
        page.close()
    assert [e["event_type"] for e in events] == [
        "patient.connection_pending",
        "patient.connection_success",
        "widget.complete",
    ]
    complete = events[-1]
    assert complete["api_mode"] == "test"
    data = complete["data"]
    assert data["external_id"] == "user-99"
    assert data["platform_type"] == "cerner"
    conn = simulator.sim.connection(data["org_connection_id"])
    assert conn.patient_index == 5
    assert (data["brand_id"], data["portal_id"], data["endpoint_id"]) == (
        conn.brand.brand_id,
        conn.brand.portal_id,
        conn.brand.endpoint_id,
    )
    wait_until(lambda: receiver.received)
    assert b'"external_id":"user-99"' in receiver.received[0].body


def test_wrong_public_id_emits_config_error(
    browser: Any, simulator: SimulatorServer, app_page: tuple[AppPage, str]
) -> None:
    page_app, url = app_page
    page_app.html = _host(f"{simulator.api_url}/stitch.js", "public_test_nope", "u")
    page = browser.new_page()
    try:
        page.goto(url)
        # Reported on load, and again when the patient clicks anyway.
        page.wait_for_function("window.events.length === 1", timeout=10_000)
        page.click("fasten-stitch-element button")
        page.wait_for_function("window.events.length === 2", timeout=10_000)
        events = page.evaluate("window.events")
        assert page.locator(".fasten-sim-modal").count() == 0
    finally:
        page.close()
    assert [e["event_type"] for e in events] == ["widget.config_error"] * 2
    assert simulator.sim.list_connections() == []


def test_auto_login_and_string_details(
    browser: Any, simulator: SimulatorServer, app_page: tuple[AppPage, str]
) -> None:
    page_app, url = app_page
    script = f"{simulator.api_url}/stitch.js?auto_login=1&detail=string"
    page_app.html = _host(script, "public_live_sim", "u-2")
    page = browser.new_page()
    try:
        page.goto(url)
        page.click("fasten-stitch-element button")
        page.wait_for_function("window.events.length >= 3", timeout=10_000)
        events = page.evaluate("window.events")
    finally:
        page.close()
    assert all(isinstance(e, str) for e in events)
    assert '"event_type":"widget.complete"' in events[-1]
    assert '"api_mode":"live"' in events[-1]
    assert len(simulator.sim.list_connections()) == 1
