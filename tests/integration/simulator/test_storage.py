"""Downloads from the storage server: Range/resume, truncated transfers, throttling, and the
file's contents (malformed lines, scale, stats)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from ehi_bridge.simulator import SimulatorServer, export_stats
from ehi_bridge.simulator.datasets import patient_lines
from ehi_bridge.simulator.state import Export
from tests.integration.simulator.conftest import TEST_AUTH, Receiver, wait_until


def _done_export(server: SimulatorServer, patient_index: int = 1, **behaviour: object) -> Export:
    conn = server.sim.connect(
        send_webhook=False, patient_index=patient_index, behaviour=behaviour or None
    )
    export = server.sim.request_export(conn.org_connection_id, "test")
    wait_until(lambda: export.status != "pending")
    return export


def _location(server: SimulatorServer, export: Export) -> str:
    response = httpx.get(
        f"{server.api_url}/v1/bridge/fhir/ehi-export/{export.task_id}/download/export-1.jsonl",
        auth=TEST_AUTH,
    )
    assert response.status_code == 302
    return response.headers["location"]


def _success_stats(receiver: Receiver, task_id: str) -> dict[str, object]:
    def find() -> dict[str, object] | None:
        for body in receiver.bodies():
            event = orjson.loads(body)
            if (
                event["type"] == "patient.ehi_export_success"
                and event["data"]["task_id"] == task_id
            ):
                stats: dict[str, object] = event["data"]["stats"]
                return stats
        return None

    result: dict[str, object] = wait_until(find)
    return result


def test_stats_match_the_file(simulator: SimulatorServer, receiver: Receiver) -> None:
    export = _done_export(simulator, patient_index=3)
    body = httpx.get(_location(simulator, export)).content
    lines = body.splitlines()
    stats = _success_stats(receiver, export.task_id)
    assert stats["total_resources"] == len(lines)
    by_type: dict[str, int] = {}
    for line in lines:
        rtype = orjson.loads(line)["resourceType"]
        by_type[rtype] = by_type.get(rtype, 0) + 1
    assert stats["total_by_resource_type"] == by_type
    assert {"Patient", "Organization", "Practitioner", "Encounter"} <= set(by_type)
    # Bytes of each line exactly as in the packaged source.
    assert lines == list(patient_lines(3))


def test_stats_mismatch_option(simulator: SimulatorServer, receiver: Receiver) -> None:
    export = _done_export(simulator, stats_mismatch=5)
    lines = httpx.get(_location(simulator, export)).content.splitlines()
    stats = _success_stats(receiver, export.task_id)
    assert stats["total_resources"] == len(lines) + 5


def test_malformed_lines(simulator: SimulatorServer, receiver: Receiver) -> None:
    export = _done_export(simulator, malformed_lines=6)
    lines = httpx.get(_location(simulator, export)).content.splitlines()
    good, invalid_json, no_type, no_id = 0, 0, 0, 0
    for line in lines:
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            invalid_json += 1
            continue
        if "resourceType" not in resource:
            no_type += 1
        elif "id" not in resource:
            no_id += 1
        else:
            good += 1
    assert (invalid_json, no_type, no_id) == (2, 2, 2)
    assert good == len(patient_lines(1))
    stats = _success_stats(receiver, export.task_id)
    assert stats["total_resources"] == good


def test_scaled_export_has_unique_ids(simulator: SimulatorServer, receiver: Receiver) -> None:
    export = _done_export(simulator, scale=20)
    lines = httpx.get(_location(simulator, export)).content.splitlines()
    assert len(lines) == 20 * len(patient_lines(1))
    keys = [(r["resourceType"], r["id"]) for r in map(orjson.loads, lines)]
    assert len(set(keys)) == len(keys)
    assert _success_stats(receiver, export.task_id)["total_resources"] == len(lines)


def test_range_request_resumes_a_download(simulator: SimulatorServer) -> None:
    export = _done_export(simulator)
    url = _location(simulator, export)
    full = httpx.get(url)
    assert full.headers["accept-ranges"] == "bytes"
    size = len(full.content)
    head = httpx.get(url, headers={"Range": "bytes=0-999"})
    assert head.status_code == 206
    assert head.headers["content-range"] == f"bytes 0-999/{size}"
    tail = httpx.get(url, headers={"Range": "bytes=1000-"})
    assert tail.status_code == 206
    assert head.content + tail.content == full.content
    suffix = httpx.get(url, headers={"Range": "bytes=-10"})
    assert suffix.content == full.content[-10:]
    beyond = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    recorded = [r.range for r in simulator.sim.list_storage_requests()]
    assert recorded == [None, "bytes=0-999", "bytes=1000-", "bytes=-10", f"bytes={size}-"]


@pytest.mark.parametrize("mode", ["close", "content_length"])
def test_truncated_transfer_then_resume(simulator: SimulatorServer, mode: str) -> None:
    export = _done_export(simulator, truncate_after_bytes=5000, truncate_mode=mode)
    url = _location(simulator, export)
    received = b""
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as response:
        assert response.status_code == 200
        declared = int(response.headers["content-length"])
        for chunk in response.iter_raw():
            received += chunk
    assert len(received) == 5000 < declared
    rest = httpx.get(url, headers={"Range": f"bytes={len(received)}-"})
    assert rest.status_code == 206
    full = received + rest.content
    assert len(full) == declared
    assert full == export.file.read_all()


def test_truncate_times_breaks_only_the_first_transfers(simulator: SimulatorServer) -> None:
    export = _done_export(simulator, truncate_after_bytes=100, truncate_times=2)
    url = _location(simulator, export)
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(url)
    assert httpx.get(url).content == export.file.read_all()
    assert export.truncations == 2


def test_throttled_transfer_is_complete(simulator: SimulatorServer) -> None:
    export = _done_export(simulator, patient_index=2, throttle_bytes_per_second=2_000_000)
    body = httpx.get(_location(simulator, export)).content
    assert body == export.file.read_all()
    assert body.splitlines() == list(patient_lines(2))


def test_missing_object_is_404_and_wrong_method_405(simulator: SimulatorServer) -> None:
    export = _done_export(simulator)
    url = _location(simulator, export)
    assert httpx.head(url).status_code == 200
    assert httpx.post(url).status_code == 405
    simulator.sim.reset()  # forgets the export; the signed URL stays valid
    assert httpx.get(url).status_code == 404


def test_export_stats_helper_matches_download(simulator: SimulatorServer) -> None:
    export = _done_export(simulator, malformed_lines=2)
    stats = export_stats(httpx.get(_location(simulator, export)).content.splitlines())
    assert stats == export.file.stats
