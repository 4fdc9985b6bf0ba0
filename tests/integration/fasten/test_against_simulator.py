"""FastenClient against the project's Fasten simulator (API + storage servers on loopback)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from ehi_bridge.config import Settings
from ehi_bridge.fasten.client import FastenClient, client_for_mode
from ehi_bridge.fasten.errors import (
    DownloadRefused,
    ExportFileGone,
    FastenAuthError,
    FastenNotFound,
)
from ehi_bridge.simulator import SimulatorConfig, SimulatorServer


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(scope="module")
def shared_simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig.for_tests()) as server:
        yield server


@pytest.fixture
def simulator(shared_simulator: SimulatorServer) -> Iterator[SimulatorServer]:
    yield shared_simulator
    shared_simulator.sim.reset()


def settings_for(server: SimulatorServer, **extra: Any) -> Settings:
    env = server.service_env()
    values: dict[str, Any] = {
        "fasten_api_url": env["EHI_FASTEN_API_URL"],
        "download_allowed_hosts": [env["EHI_DOWNLOAD_ALLOWED_HOSTS"]],
        "test_public_id": env["EHI_TEST_PUBLIC_ID"],
        "test_private_key": SecretStr(env["EHI_TEST_PRIVATE_KEY"]),
        "live_public_id": env["EHI_LIVE_PUBLIC_ID"],
        "live_private_key": SecretStr(env["EHI_LIVE_PRIVATE_KEY"]),
        **extra,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def client(server: SimulatorServer, **extra: Any) -> FastenClient:
    return client_for_mode(settings_for(server, **extra), "test", sleep=Sleeps())


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def success_link(server: SimulatorServer, task_id: str) -> str:
    """The download link of the export's success webhook, as the service would get it."""

    def find() -> str | None:
        for delivery in server.sim.list_deliveries(event_type="patient.ehi_export_success"):
            if delivery.data.get("task_id") == task_id:
                return str(delivery.data["download_links"][0]["url"])
        return None

    return str(wait_until(find))


async def test_export_journey_and_exact_download(
    simulator: SimulatorServer, tmp_path: Path
) -> None:
    conn = simulator.sim.connect(external_id="user-1", brand="epic", send_webhook=False)
    async with client(simulator) as fasten:
        task = await fasten.create_export(conn.org_connection_id)
        again = await fasten.create_export(conn.org_connection_id)
        assert task.status == "pending" and again.task_id == task.task_id
        link = success_link(simulator, task.task_id)
        assert (await fasten.export_status(task.task_id)).status == "success"
        org = await fasten.org_connection(conn.org_connection_id)
        result = await fasten.download(link, tmp_path / "export.ndjson")
    assert (org.org_connection_id, org.status, org.api_mode) == (
        conn.org_connection_id,
        "authorized",
        "test",
    )
    expected = simulator.sim.export(task.task_id).file.read_all()
    assert (tmp_path / "export.ndjson").read_bytes() == expected
    assert result.bytes == len(expected) > 0
    requests = simulator.sim.list_storage_requests()
    assert requests and not any(r.authorization_present for r in requests)


@pytest.mark.parametrize("mode", ["close", "content_length"])
async def test_broken_transfers_resume_with_range(
    simulator: SimulatorServer, tmp_path: Path, mode: str
) -> None:
    conn = simulator.sim.connect(
        send_webhook=False,
        behaviour={"truncate_after_bytes": 5000, "truncate_mode": mode},
    )
    async with client(simulator) as fasten:
        task = await fasten.create_export(conn.org_connection_id)
        result = await fasten.download(success_link(simulator, task.task_id), tmp_path / "f")
    expected = simulator.sim.export(task.task_id).file.read_all()
    assert (tmp_path / "f").read_bytes() == expected
    ranges = [r.range for r in simulator.sim.list_storage_requests()]
    # Every transfer breaks at byte 5000; one from 5000 on completes.
    assert ranges == [None, "bytes=5000-"]
    assert result.resumes == 1


async def test_bearer_scheme_is_accepted(simulator: SimulatorServer, tmp_path: Path) -> None:
    conn = simulator.sim.connect(send_webhook=False)
    async with client(simulator, fasten_auth_scheme="bearer") as fasten:
        task = await fasten.create_export(conn.org_connection_id)
        await fasten.download(success_link(simulator, task.task_id), tmp_path / "f")
    assert (tmp_path / "f").stat().st_size > 0


async def test_expired_file_is_gone(simulator: SimulatorServer, tmp_path: Path) -> None:
    conn = simulator.sim.connect(send_webhook=False)
    async with client(simulator) as fasten:
        task = await fasten.create_export(conn.org_connection_id)
        link = success_link(simulator, task.task_id)
        simulator.sim.advance_clock(25 * 3600)
        with pytest.raises(ExportFileGone):
            await fasten.download(link, tmp_path / "f")
    assert list(tmp_path.iterdir()) == []


async def test_wrong_key_and_wrong_mode(simulator: SimulatorServer) -> None:
    live = simulator.sim.connect(mode="live", send_webhook=False)
    async with client(simulator, test_private_key=SecretStr("private_test_wrong")) as fasten:
        with pytest.raises(FastenAuthError):
            await fasten.create_export(live.org_connection_id)
    async with client(simulator) as fasten:
        with pytest.raises(FastenNotFound):
            await fasten.org_connection(live.org_connection_id)


async def test_default_allow_list_refuses_other_hosts(
    simulator: SimulatorServer, tmp_path: Path
) -> None:
    conn = simulator.sim.connect(send_webhook=False)
    async with client(simulator) as fasten:
        task = await fasten.create_export(conn.org_connection_id)
    link = success_link(simulator, task.task_id)
    elsewhere = link.replace(urlsplit(link).hostname or "", "127.0.0.2")
    async with client(simulator) as fasten:
        with pytest.raises(DownloadRefused):
            await fasten.download(elsewhere, tmp_path / "f")
