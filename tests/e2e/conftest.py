"""End-to-end fixtures: the real ``ehi-bridge serve`` (and simulator) as separate processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

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
