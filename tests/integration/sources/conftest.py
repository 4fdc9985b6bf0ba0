"""The SMART sandbox over real HTTP (one per module), and settings pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from ehi_bridge.records.parser_process import keep_parser_ready, stop_ready_parser
from ehi_bridge.simulator.smart.server import SmartSandbox
from ehi_bridge.sources import service
from tests.smart_flow import consent

REDIRECT = "http://127.0.0.1:9/sources/callback"


class Sandbox:
    def __init__(self, box: SmartSandbox) -> None:
        self.box = box
        self.url = box.url
        self.http = httpx.Client(base_url=box.url, timeout=15)

    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.http.request(method, f"/_smart{path}", **kwargs)
        assert answer.status_code < 300, answer.text
        return answer.json() if answer.content else None

    def fault(self, kind: str, **body: Any) -> None:
        self.control("POST", "/faults", json={"kind": kind, **body})

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("GET", "/stats")
        return result

    def token_requests(self, profile: str) -> int:
        return int(self.stats()["token_requests"][profile])

    def patients(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", "/patients")
        return sorted(result, key=lambda p: p["resource_count"])

    def resources(self, patient_id: str) -> set[tuple[str, str]]:
        return {tuple(x) for x in self.control("GET", f"/patients/{patient_id}/resources")}

    def reset(self) -> None:
        self.control("DELETE", "/faults")
        self.control("POST", "/stats/reset")
        self.control("POST", "/settings", json={"access_token_ttl_seconds": 300})


@pytest.fixture(scope="module", autouse=True)
def ready_parser() -> Iterator[None]:
    """A parser process booted ahead of each ingest, as the background runtime keeps one."""
    keep_parser_ready()
    yield
    stop_ready_parser()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = SmartSandbox()
    box.start()
    try:
        yield Sandbox(box)
    finally:
        box.stop()


@pytest.fixture
def smart(sandbox: Sandbox) -> Sandbox:
    sandbox.reset()
    return sandbox


@pytest.fixture
def settings(tmp_path: Path, database_url: str, smart: Sandbox) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        smart_sandbox_url=smart.url,
        source_redirect_url=REDIRECT,
        source_client_secrets={"sandbox-generic": "sandbox-secret"},
        source_max_retry_after_seconds=5,
        source_max_retries=3,
    )


def authorize(
    db: Database,
    settings: Settings,
    platform: str = "sandbox-generic",
    patient_id: str | None = None,
    *,
    sync: bool = False,
    **kwargs: Any,
) -> str:
    """A connection authorized through the sandbox's consent page; its id."""
    start = service.begin_authorization(db, settings, platform_id=platform, **kwargs)
    answer = consent(start.url, patient_id)
    assert answer["state"] == start.state
    return service.complete_authorization(db, settings, answer["state"], answer["code"], sync=sync)
