"""Headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright, and the
dashboard served by uvicorn in a thread for browser tests that need no subprocesses."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from ehi_bridge.app import create_api
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from ehi_bridge.db.migrate import upgrade
from tests.integration.dashboard.helpers import Seeded, add_user, seed, settings_for
from tests.support import free_port, skip_or_fail

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the session; missing Chromium skips, or fails under CI=true."""
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        skip_or_fail("headless Chromium (/usr/bin/chromium) is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the playwright Python package is not installed")
        raise
    executable = CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    yield tab
    context.close()


def recording_connections_available() -> bool:
    """Whether ``POST /api/connect/complete`` can record a connection yet (it needs
    ``connections.service.record_widget_complete``)."""
    try:
        from ehi_bridge.connections import service
    except ImportError:
        return False
    return hasattr(service, "record_widget_complete")


def save_screenshot(tab: Any, tmp_path: Path, name: str) -> Path:
    """Into the test's tmp dir, and into ``EHI_SCREENSHOT_DIR`` when set (to look at)."""
    path = tmp_path / name
    tab.screenshot(path=str(path), full_page=True)
    target = os.environ.get("EHI_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


class ThreadedServer:
    """uvicorn serving an ASGI app on a free port in a daemon thread."""

    def __init__(self, app: FastAPI, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class LiveDashboard:
    base_url: str
    db: Database
    settings: Settings
    seeded: Seeded


@pytest.fixture
def simulator() -> Iterator[Any]:
    """The Fasten simulator in a thread: its ``/stitch.js`` is the widget stand-in."""
    from ehi_bridge.simulator.config import SimulatorConfig
    from ehi_bridge.simulator.server import SimulatorServer

    with SimulatorServer(SimulatorConfig.for_tests()) as server:
        yield server


@pytest.fixture
def live_dashboard(tmp_path: Path, simulator: Any) -> Iterator[LiveDashboard]:
    """The FastAPI app (dashboard, connect page, API) with seeded rows and no background
    runtime; the connect page loads the simulator's widget."""
    url = f"sqlite:///{tmp_path / 'browser.sqlite3'}"
    upgrade(url)
    db = Database(url)
    add_user(db)
    seeded = seed(db)
    port = free_port()
    settings = settings_for(
        url,
        stitch_js_url=simulator.stitch_js_url + "?auto_login=1",
        test_public_id=simulator.config.modes["test"].public_id,
        public_base_url=f"http://127.0.0.1:{port}",
    )
    with ThreadedServer(create_api(settings, db), port) as server:
        yield LiveDashboard(base_url=server.base_url, db=db, settings=settings, seeded=seeded)
    db.dispose()
