"""The control API (/_sim) and the `ehi-bridge simulator scenario` CLI against a live server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
from typer.testing import CliRunner

from ehi_bridge.simulator import SimulatorServer
from ehi_bridge.simulator.cli import app as simulator_cli
from tests.integration.simulator.conftest import Receiver, wait_until


def _sim(server: SimulatorServer, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(method, f"{server.api_url}/_sim{path}", json=body)


def test_connect_set_behaviour_export_and_list(
    simulator: SimulatorServer, receiver: Receiver
) -> None:
    created = _sim(
        simulator,
        "POST",
        "/connections",
        {"count": 3, "external_ids": ["a", "b", "c"], "platform": "nextgen"},
    )
    assert created.status_code == 200
    conns = created.json()
    assert [c["external_id"] for c in conns] == ["a", "b", "c"]
    assert {c["platform_type"] for c in conns} == {"nextgen"}
    wait_until(lambda: len(receiver.received) == 3)

    target = conns[0]["org_connection_id"]
    changed = _sim(
        simulator,
        "PATCH",
        f"/connections/{target}/behaviour",
        {"fail_reason": "scope_patient_missing"},
    )
    assert changed.json()["behaviour"]["fail_reason"] == "scope_patient_missing"
    bad = _sim(simulator, "PATCH", f"/connections/{target}/behaviour", {"fail_reason": "nope"})
    assert bad.status_code == 400
    unknown = _sim(simulator, "PATCH", f"/connections/{target}/behaviour", {"colour": "red"})
    assert unknown.status_code == 400

    export = _sim(simulator, "POST", "/exports", {"org_connection_id": target}).json()
    wait_until(lambda: _sim(simulator, "GET", "/exports").json()[0]["status"] == "failed")
    assert _sim(simulator, "GET", "/exports").json()[0]["task_id"] == export["task_id"]
    deliveries = wait_until(
        lambda: [
            d
            for d in _sim(simulator, "GET", "/deliveries").json()
            if d["type"] == "patient.ehi_export_failed" and d["state"] == "delivered"
        ]
    )
    assert deliveries[0]["org_connection_id"] == target
    assert deliveries[0]["attempts"][0]["status_code"] == 200


def test_bulk_revoke_and_webhook_test(simulator: SimulatorServer, receiver: Receiver) -> None:
    _sim(simulator, "POST", "/connections", {"count": 4, "send_webhook": False})
    revoked = _sim(simulator, "POST", "/revoke", {"count": 3}).json()
    assert len(revoked) == 3 and {c["status"] for c in revoked} == {"revoked"}
    rest = _sim(simulator, "POST", "/revoke", {"all": True}).json()
    assert len(rest) == 1
    assert _sim(simulator, "POST", "/revoke", {"all": True}).status_code == 400
    event_id = _sim(simulator, "POST", "/webhooks/test", {"mode": "test"}).json()["event_id"]
    wait_until(lambda: len(receiver.received) == 5)
    types = [orjson.loads(b)["type"] for b in receiver.bodies()]
    assert types.count("patient.authorization_revoked") == 4
    assert event_id in {orjson.loads(b)["id"] for b in receiver.bodies()}


def test_hold_release_clock_and_reset(simulator: SimulatorServer, receiver: Receiver) -> None:
    _sim(simulator, "POST", "/webhooks/hold")
    ids = [_sim(simulator, "POST", "/webhooks/test").json()["event_id"] for _ in range(3)]
    released = _sim(simulator, "POST", "/webhooks/release", {"order": "fifo"}).json()["released"]
    assert [d["event_id"] for d in released] == ids
    wait_until(lambda: len(receiver.received) == 3)
    assert [orjson.loads(b)["id"] for b in receiver.bodies()] == ids

    before = _sim(simulator, "GET", "/clock").json()["now"]
    after = _sim(simulator, "POST", "/clock/advance", {"seconds": 3600}).json()
    assert after["now"] - before >= 3600
    assert after["offset_seconds"] == 3600
    assert _sim(simulator, "POST", "/clock/advance", {"seconds": -1}).status_code == 422

    assert _sim(simulator, "GET", "/state").json()["deliveries"] == 3
    _sim(simulator, "POST", "/reset")
    state = _sim(simulator, "GET", "/state").json()
    assert state["deliveries"] == 0 and state["connections"] == 0
    assert state["clock"]["offset_seconds"] == 0


def test_default_behaviour_for_widget_connections(simulator: SimulatorServer) -> None:
    changed = _sim(
        simulator, "PATCH", "/behaviour/default", {"fail_reason": "token_refresh_failure"}
    )
    assert changed.json()["fail_reason"] == "token_refresh_failure"
    assert _sim(simulator, "GET", "/behaviour/default").json() == changed.json()
    result = httpx.post(
        f"{simulator.api_url}/stitch/connect",
        json={"public_id": "public_test_sim", "brand_id": "brand-epic"},
    ).json()
    conn = simulator.sim.connection(result["widget_complete"]["org_connection_id"])
    assert conn.behaviour.fail_reason == "token_refresh_failure"
    assert _sim(simulator, "PATCH", "/behaviour/default", {"scale": 0}).status_code == 400


def test_storage_requests_are_listed(simulator: SimulatorServer) -> None:
    conn = simulator.sim.connect(send_webhook=False)
    export = simulator.sim.request_export(conn.org_connection_id, "test")
    wait_until(lambda: export.status == "success")
    from ehi_bridge.simulator.storage import signed_url

    httpx.get(signed_url(simulator.sim, export), headers={"Range": "bytes=0-9"})
    [request] = _sim(simulator, "GET", "/storage/requests").json()
    assert request["path"] == f"/exports/{export.task_id}/export-1.jsonl"
    assert request["range"] == "bytes=0-9"
    assert request["status"] == 206
    assert request["authorization_present"] is False
    assert "Signature" not in str(request)


def test_control_token_is_required_when_set(
    make_simulator: Callable[..., SimulatorServer],
) -> None:
    server = make_simulator(control_token="s3cret-token")
    assert _sim(server, "GET", "/state").status_code == 401
    wrong = httpx.get(f"{server.api_url}/_sim/state", headers={"X-Sim-Token": "nope"})
    assert wrong.status_code == 401
    ok = httpx.get(f"{server.api_url}/_sim/state", headers={"X-Sim-Token": "s3cret-token"})
    assert ok.status_code == 200


def test_scenario_cli_drives_the_simulator(simulator: SimulatorServer, receiver: Receiver) -> None:
    runner = CliRunner()
    url = ["--url", simulator.api_url]
    result = runner.invoke(
        simulator_cli,
        [
            "scenario",
            "connect",
            *url,
            "--count",
            "2",
            "--platform",
            "epic",
            "--external-id",
            "x1",
            "--external-id",
            "x2",
            "--set",
            "slow=true",
            "--set",
            "malformed_lines=3",
        ],
    )
    assert result.exit_code == 0, result.output
    conns = orjson.loads(result.output)
    assert [c["external_id"] for c in conns] == ["x1", "x2"]
    assert conns[0]["behaviour"]["slow"] is True
    assert conns[0]["behaviour"]["malformed_lines"] == 3
    target = conns[0]["org_connection_id"]

    result = runner.invoke(
        simulator_cli, ["scenario", "set", target, *url, "--set", "fail_reason=null"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(simulator_cli, ["scenario", "export", target, *url])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["status"] == "pending"
    result = runner.invoke(simulator_cli, ["scenario", "advance", "2100", *url])
    assert result.exit_code == 0, result.output
    wait_until(lambda: simulator.sim.list_exports()[0].status == "success")

    result = runner.invoke(simulator_cli, ["scenario", "revoke", *url, "--all"])
    assert result.exit_code == 0, result.output
    assert len(orjson.loads(result.output)) == 2
    result = runner.invoke(simulator_cli, ["scenario", "webhook-test", *url])
    assert result.exit_code == 0
    result = runner.invoke(simulator_cli, ["scenario", "deliveries", *url])
    types = [d["type"] for d in orjson.loads(result.output)]
    assert types.count("patient.connection_success") == 2
    assert "patient.ehi_export_success" in types and "webhook.test" in types

    result = runner.invoke(
        simulator_cli, ["scenario", "default", *url, "--set", "throttle_bytes_per_second=5000"]
    )
    assert result.exit_code == 0, result.output
    assert simulator.sim.default_behaviour.throttle_bytes_per_second == 5000

    bad = runner.invoke(simulator_cli, ["scenario", "set", "nope", *url, "--set", "scale=2"])
    assert bad.exit_code == 1
    unreachable = runner.invoke(simulator_cli, ["scenario", "state", "--url", "http://127.0.0.1:9"])
    assert unreachable.exit_code == 2
