"""`/docs` and `/redoc` render every operation in headless Chromium with the network cut
off: every asset comes from the app itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ehi_bridge.app import create_api
from ehi_bridge.db.engine import Database
from ehi_bridge.db.migrate import upgrade
from tests.e2e.browser.conftest import ThreadedServer
from tests.integration.dashboard.helpers import settings_for

pytestmark = pytest.mark.browser


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    url = f"sqlite:///{tmp_path / 'docs.sqlite3'}"
    upgrade(url)
    db = Database(url)
    # Published documents (EHI_PUBLIC_API_DOCS): a browser sends no API token.
    api = create_api(settings_for(url, public_api_docs=True), db)
    try:
        with ThreadedServer(api) as server:
            yield server.base_url, api.openapi()
    finally:
        db.dispose()


def offline(tab: Any) -> list[str]:
    """Abort every request that leaves 127.0.0.1; returns the list of what was attempted."""
    blocked: list[str] = []

    def handle(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    tab.route("**/*", handle)
    return blocked


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (method.upper(), path, op.get("summary", ""))
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]


def test_swagger_ui_renders_every_operation_offline(
    page: Any, served: tuple[str, dict[str, Any]]
) -> None:
    base, spec = served
    blocked = offline(page)
    page.goto(f"{base}/docs")
    page.wait_for_selector(".opblock")
    operations = _operations(spec)
    assert page.locator(".opblock").count() == len(operations)
    rendered = {
        t.replace("\u200b", "") for t in page.locator(".opblock-summary-path").all_inner_texts()
    }
    assert rendered == {path for _, path, _ in operations}
    assert blocked == []


def test_redoc_renders_every_operation_offline(
    page: Any, served: tuple[str, dict[str, Any]]
) -> None:
    base, spec = served
    blocked = offline(page)
    page.goto(f"{base}/redoc")
    page.wait_for_selector("[data-section-id^='operation/']", state="attached")
    operations = _operations(spec)
    sections = page.locator("[data-section-id^='operation/']")
    assert sections.count() >= len(operations)
    text = page.inner_text("body")
    for _, _, summary in operations:
        assert summary in text
    assert blocked == []
