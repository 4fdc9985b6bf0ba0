"""Contract check: the service's own Fasten client works against the simulator."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

from ehi_bridge.fasten.client import FastenClient
from ehi_bridge.simulator import SimulatorServer


async def test_service_client_requests_and_downloads_with_resume(
    simulator: SimulatorServer, tmp_path: Path
) -> None:
    sim = simulator.sim
    conn = sim.connect(
        send_webhook=False,
        patient_index=0,
        behaviour={"truncate_after_bytes": 200_000, "truncate_times": 1, "malformed_lines": 2},
    )
    async with FastenClient(
        simulator.fasten_api_url,
        "public_test_sim",
        "private_test_sim",
        allowed_hosts={urlsplit(simulator.storage_url).netloc},
        backoff_base=0.01,
    ) as client:
        task = await client.create_export(conn.org_connection_id)
        assert (await client.create_export(conn.org_connection_id)).task_id == task.task_id
        connection = await client.org_connection(conn.org_connection_id)
        assert connection.status == "authorized"
        assert connection.platform_type == conn.brand.platform_type
        for _ in range(200):
            status = await client.export_status(task.task_id)
            if status.status != "pending":
                break
            await asyncio.sleep(0.02)
        assert status.status == "success"
        url = (
            f"{simulator.fasten_api_url}/bridge/fhir/ehi-export/{task.task_id}"
            "/download/export-1.jsonl"
        )
        result = await client.download(url, tmp_path / "export.jsonl")
    export = sim.export(task.task_id)
    assert result.path.read_bytes() == export.file.read_all()
    assert result.resumes == 1
    requests = sim.list_storage_requests()
    assert [r.range for r in requests] == [None, "bytes=200000-"]
    assert not any(r.authorization_present for r in requests)
