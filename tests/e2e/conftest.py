"""End-to-end fixtures: the real ``ehi-bridge serve`` (and simulator) as separate processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehi_bridge.db.engine import Database
from tests.support import ehi_command, free_port, running
from tests.webhook_client import LIVE_SECRET, TEST_SECRET

ServerFactory = Callable[..., AbstractContextManager[Any]]


@pytest.fixture
def service_env(base_env: dict[str, str], database_url: str) -> dict[str, str]:
    return {**base_env, "EHI_DATABASE_URL": database_url}


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """Service settings without a database (tests add ``EHI_DATABASE_URL``)."""
    return {
        "EHI_DATA_DIR": str(tmp_path / "data"),
        "EHI_TEST_WEBHOOK_SECRETS": TEST_SECRET,
        "EHI_LIVE_WEBHOOK_SECRETS": LIVE_SECRET,
        "EHI_TEST_PUBLIC_ID": "public_test_e2e",
        "EHI_TEST_PRIVATE_KEY": "private_test_e2e",
        "EHI_LIVE_PUBLIC_ID": "public_live_e2e",
        "EHI_LIVE_PRIVATE_KEY": "private_live_e2e",
        "EHI_EVENT_RETRY_INTERVAL_SECONDS": "0.2",
        "EHI_LOG_JSON": "true",
    }


@pytest.fixture
def start_service(tmp_path: Path) -> ServerFactory:
    """``with start_service(env, port=…) as (proc, base_url):`` runs ``ehi-bridge serve``."""
    from contextlib import contextmanager

    @contextmanager
    def _start(
        env: dict[str, str], port: int | None = None, name: str = "service"
    ) -> Iterator[tuple[Any, str]]:
        port = port or free_port()
        base = f"http://127.0.0.1:{port}"
        with running(
            ehi_command("serve", "--port", str(port)),
            env,
            ready_url=f"{base}/healthz",
            log_path=tmp_path / f"{name}.log",
        ) as proc:
            yield proc, base

    return _start


@dataclass
class LiveStack:
    """``ehi-bridge serve`` (subprocess) wired to a Fasten simulator (its own servers)."""

    base_url: str
    sim: Any  # ehi_bridge.simulator.server.SimulatorServer
    db: Database
    api_token: str
    username: str
    password: str
    env: dict[str, str]
    proc: Any

    @property
    def sim_url(self) -> str:
        return str(self.sim.api_url)

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.api_token}"},
            timeout=30,
        )


@pytest.fixture
def stack_env(base_env: dict[str, str]) -> dict[str, str]:
    """Extra service settings a test may add before ``live_stack`` starts."""
    return {}


@pytest.fixture
def live_stack(
    base_env: dict[str, str],
    stack_env: dict[str, str],
    database_url: str,
    db: Database,
    tmp_path: Path,
) -> Iterator[LiveStack]:
    from ehi_bridge.auth.service import create_api_token, create_user
    from ehi_bridge.simulator.config import SimulatorConfig
    from ehi_bridge.simulator.server import SimulatorServer

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = SimulatorConfig.for_tests(
        webhook_url_test=f"{base}/webhooks/fasten/test",
        webhook_url_live=f"{base}/webhooks/fasten/live",
        test_secret=TEST_SECRET,
        live_secret=LIVE_SECRET,
        default_export_delay_seconds=1.0,
    )
    username, password = "operator", "correct horse battery"
    with db.session() as session:
        create_user(session, username, password)
        _, token = create_api_token(session, "e2e")
    with SimulatorServer(config) as sim:
        env = {
            **base_env,
            **sim.service_env(),
            "EHI_DATABASE_URL": database_url,
            "EHI_SESSION_SECRET": "e2e-session-secret-0123456789abcdef",
            "EHI_CONNECT_LINK_SECRET": "e2e-connect-link-secret-0123456789",
            "EHI_PUBLIC_BASE_URL": base,
            **stack_env,
        }
        with running(
            ehi_command("serve", "--port", str(port)),
            env,
            ready_url=f"{base}/healthz",
            log_path=tmp_path / "service.log",
        ) as proc:
            yield LiveStack(base, sim, db, token, username, password, env, proc)
