"""Webhooks over real HTTP: Standard Webhooks signatures, retries, duplicates, order, types."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from standardwebhooks import Webhook

from ehi_bridge.simulator import FAILURE_REASONS, SimulatorServer
from tests.integration.simulator.conftest import Receiver, wait_until


def _verify(server: SimulatorServer, received: object, mode: str = "test") -> dict[str, object]:
    secret = server.config.modes[mode].webhook_secrets[0]  # type: ignore[index]
    payload = Webhook(secret).verify(received.body, received.headers)  # type: ignore[attr-defined]
    assert isinstance(payload, dict)
    return payload


def _events(receiver: Receiver, event_type: str | None = None) -> list[dict[str, object]]:
    out = [orjson.loads(b) for b in receiver.bodies()]
    return [e for e in out if event_type is None or e["type"] == event_type]


def test_connection_success_is_signed_per_standard_webhooks(
    simulator: SimulatorServer, receiver: Receiver
) -> None:
    conn = simulator.sim.connect(external_id="user-42", brand="cerner")
    wait_until(lambda: receiver.received)
    received = receiver.received[0]
    payload = _verify(simulator, received)
    assert set(payload) == {"api_mode", "date", "id", "type", "data"}
    assert payload["type"] == "patient.connection_success"
    assert payload["api_mode"] == "test"
    assert received.headers["webhook-id"] == payload["id"]
    data = payload["data"]
    assert isinstance(data, dict)
    assert data["org_connection_id"] == conn.org_connection_id
    assert data["external_id"] == "user-42"
    assert data["platform_type"] == "cerner"
    assert data["connection_status"] == "authorized"
    # A different secret does not verify.
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        Webhook(simulator.config.modes["live"].webhook_secrets[0]).verify(
            received.body, received.headers
        )


def test_live_mode_signs_with_the_live_secret(
    simulator: SimulatorServer, receiver: Receiver
) -> None:
    simulator.sim.connect(mode="live")
    wait_until(lambda: receiver.received)
    payload = _verify(simulator, receiver.received[0], mode="live")
    assert payload["api_mode"] == "live"


def test_retries_are_signed_afresh_with_new_timestamp_and_date(
    make_simulator: Callable[..., SimulatorServer], receiver: Receiver
) -> None:
    server = make_simulator(retry_initial_delay_seconds=1.0, retry_factor=1.0)
    receiver.script = [500, 500, 200]
    server.sim.send_test_webhook()
    wait_until(lambda: len(receiver.received) >= 3, timeout=15)
    attempts = receiver.received[:3]
    payloads = [_verify(server, r) for r in attempts]
    assert len({p["id"] for p in payloads}) == 1
    assert len({r.headers["webhook-id"] for r in attempts}) == 1
    assert len({r.headers["webhook-timestamp"] for r in attempts}) == 3
    assert len({p["date"] for p in payloads}) == 3
    assert len({r.headers["webhook-signature"] for r in attempts}) == 3
    delivery = server.sim.list_deliveries("webhook.test")[0]
    wait_until(lambda: delivery.state == "delivered")
    assert [a.status_code for a in delivery.attempts] == [500, 500, 200]
    assert len(receiver.received) == 3  # nothing more once answered 2xx


def test_gives_up_after_max_retries(
    make_simulator: Callable[..., SimulatorServer], receiver: Receiver
) -> None:
    server = make_simulator(max_retries=2, retry_initial_delay_seconds=0.05)
    receiver.script = [503] * 10
    server.sim.send_test_webhook()
    delivery = server.sim.list_deliveries()[0]
    wait_until(lambda: delivery.state == "failed")
    assert len(delivery.attempts) == 3
    assert len(receiver.received) == 3


def test_timeout_counts_as_a_failed_attempt(
    make_simulator: Callable[..., SimulatorServer], receiver: Receiver
) -> None:
    server = make_simulator(webhook_timeout_seconds=0.2, max_retries=1)
    receiver.delay_seconds = 0.5
    server.sim.send_test_webhook()
    delivery = server.sim.list_deliveries()[0]
    wait_until(lambda: delivery.state == "failed", timeout=10)
    assert [a.error for a in delivery.attempts] == ["ReadTimeout", "ReadTimeout"]


def test_a_burst_waits_for_delivery_slots_instead_of_failing_attempts(
    make_simulator: Callable[..., SimulatorServer], receiver: Receiver
) -> None:
    """Many patients connecting at once: at most ``webhook_concurrency`` deliveries are in
    flight, and the rest wait their turn; none spends an attempt waiting for a connection."""
    server = make_simulator(webhook_concurrency=4, webhook_timeout_seconds=1.0)
    receiver.delay_seconds = 0.05
    server.sim.connect_many(60)
    deliveries = server.sim.list_deliveries()
    assert len(deliveries) == 60
    wait_until(lambda: all(d.state == "delivered" for d in deliveries), timeout=20)
    assert all(len(d.attempts) == 1 for d in deliveries)
    assert 1 < receiver.most_in_flight({d.event_id for d in deliveries}) <= 4


def test_webhook_test_event(simulator: SimulatorServer, receiver: Receiver) -> None:
    event_id = simulator.sim.send_test_webhook("test")
    wait_until(lambda: receiver.received)
    payload = _verify(simulator, receiver.received[0])
    assert payload["id"] == event_id
    assert payload["type"] == "webhook.test"
    data = payload["data"]
    assert isinstance(data, dict)
    assert data["hello"] == "world" and data["random"]


def test_duplicates_share_the_event_id(simulator: SimulatorServer, receiver: Receiver) -> None:
    simulator.sim.connect(behaviour={"duplicate_webhooks": 3})
    wait_until(lambda: len(receiver.received) >= 3)
    payloads = [_verify(simulator, r) for r in receiver.received]
    assert len(payloads) == 3
    assert len({p["id"] for p in payloads}) == 1


def test_held_webhooks_are_released_in_reverse_order(
    simulator: SimulatorServer, receiver: Receiver
) -> None:
    simulator.sim.hold_webhooks()
    first = simulator.sim.send_test_webhook()
    second = simulator.sim.send_test_webhook()
    third = simulator.sim.send_test_webhook()
    simulator.sim.clock.advance(5)
    assert receiver.received == []
    simulator.sim.release_webhooks("reverse")
    wait_until(lambda: len(receiver.received) == 3)
    assert [p["id"] for p in _events(receiver)] == [third, second, first]


def test_webhook_delay_is_simulated_time(simulator: SimulatorServer, receiver: Receiver) -> None:
    simulator.sim.connect(behaviour={"webhook_delay_seconds": 3600})
    delivery = simulator.sim.list_deliveries()[0]
    simulator.sim.send_test_webhook()
    wait_until(lambda: len(receiver.received) == 1)
    assert _events(receiver)[0]["type"] == "webhook.test"
    assert delivery.state == "pending"
    simulator.sim.advance_clock(3600)
    wait_until(lambda: len(receiver.received) == 2)
    assert _events(receiver)[1]["type"] == "patient.connection_success"


@pytest.mark.parametrize("reason", FAILURE_REASONS)
def test_export_fails_with_each_reason(
    simulator: SimulatorServer, receiver: Receiver, reason: str
) -> None:
    conn = simulator.sim.connect(behaviour={"fail_reason": reason}, send_webhook=False)
    export = simulator.sim.request_export(conn.org_connection_id, "test")
    wait_until(lambda: _events(receiver, "patient.ehi_export_failed"))
    event = _events(receiver, "patient.ehi_export_failed")[0]
    assert event["data"] == {
        "failure_reason": reason,
        "org_connection_id": conn.org_connection_id,
        "task_id": export.task_id,
        "org_id": conn.brand.org_id,
    }
    assert simulator.sim.export(export.task_id).status == "failed"


def test_export_success_event_shape(simulator: SimulatorServer, receiver: Receiver) -> None:
    conn = simulator.sim.connect(send_webhook=False, patient_index=2)
    export = simulator.sim.request_export(conn.org_connection_id, "test")
    wait_until(lambda: _events(receiver, "patient.ehi_export_success"))
    event = _events(receiver, "patient.ehi_export_success")[0]
    data = event["data"]
    assert isinstance(data, dict)
    assert data["task_id"] == export.task_id
    assert data["org_id"] == conn.brand.org_id
    [link] = data["download_links"]
    assert link["export_type"] == "jsonl"
    assert link["content_type"] == "application/fhir+ndjson"
    assert link["url"] == (
        f"{simulator.api_url}/v1/bridge/fhir/ehi-export/{export.task_id}/download/export-1.jsonl"
    )
    assert "download_link" not in data
    stats = data["stats"]
    assert stats["total_resources"] == sum(stats["total_by_resource_type"].values()) > 0


def test_legacy_single_download_link(simulator: SimulatorServer, receiver: Receiver) -> None:
    conn = simulator.sim.connect(send_webhook=False, behaviour={"legacy_download_link": True})
    simulator.sim.request_export(conn.org_connection_id, "test")
    wait_until(lambda: _events(receiver, "patient.ehi_export_success"))
    data = _events(receiver, "patient.ehi_export_success")[0]["data"]
    assert isinstance(data, dict)
    assert "download_links" not in data
    assert data["download_link"].startswith(simulator.api_url + "/v1/bridge/fhir/ehi-export/")


def test_bulk_revocation(simulator: SimulatorServer, receiver: Receiver) -> None:
    conns = simulator.sim.connect_many(5, send_webhook=False)
    simulator.sim.revoke([c.org_connection_id for c in conns[:4]])
    wait_until(lambda: len(_events(receiver, "patient.authorization_revoked")) == 4)
    events = _events(receiver, "patient.authorization_revoked")
    assert (
        {e["data"]["org_connection_id"] for e in events}
        == {  # type: ignore[index]
            c.org_connection_id for c in conns[:4]
        }
    )
    assert all(e["data"]["connection_status"] == "revoked" for e in events)  # type: ignore[index]
    assert len({e["id"] for e in events}) == 4
    assert simulator.sim.connection(conns[4].org_connection_id).status == "authorized"


def test_410_disables_the_endpoint(simulator: SimulatorServer, receiver: Receiver) -> None:
    import httpx

    receiver.script = [410]
    simulator.sim.send_test_webhook()
    first = simulator.sim.list_deliveries()[0]
    wait_until(lambda: first.state == "failed")
    control = f"{simulator.api_url}/_sim/endpoints"
    assert httpx.get(control).json()["test"]["disabled"] is True
    simulator.sim.send_test_webhook()
    simulator.sim.advance_clock(3600)
    assert len(receiver.received) == 1
    enabled = httpx.post(f"{control}/test/enable", json={"recover": True}).json()
    assert enabled == {"enabled": "test", "recovered": 2}
    wait_until(lambda: len(receiver.received) == 3)
    assert httpx.get(control).json()["test"]["disabled"] is False
