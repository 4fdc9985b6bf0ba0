"""Simulator state without network: exports, clock, deliveries, retries, signing, auth."""

from __future__ import annotations

import base64

import pytest
from standardwebhooks import Webhook

from ehi_bridge.simulator import Behaviour, Simulator, SimulatorConfig, SimulatorError
from ehi_bridge.simulator.api import Unauthorized, authenticate
from ehi_bridge.simulator.state import Attempt
from ehi_bridge.simulator.storage import signature
from ehi_bridge.simulator.webhooks import signed_attempt
from ehi_bridge.webhooks.signature import Verifier


@pytest.fixture
def sim() -> Simulator:
    return Simulator(SimulatorConfig.for_tests(webhook_url_test="http://127.0.0.1:9/hook"))


def test_repeat_request_returns_pending_task_then_a_new_one(sim: Simulator) -> None:
    conn = sim.connect(send_webhook=False)
    first = sim.request_export(conn.org_connection_id, "test")
    assert sim.request_export(conn.org_connection_id, "test") is first
    sim.advance_clock(10)
    assert sim.complete_due_exports() == [first]
    assert first.status == "success"
    second = sim.request_export(conn.org_connection_id, "test")
    assert second.task_id != first.task_id


def test_wrong_mode_and_revoked_are_refused(sim: Simulator) -> None:
    conn = sim.connect(send_webhook=False)
    with pytest.raises(SimulatorError) as not_found:
        sim.request_export(conn.org_connection_id, "live")
    assert not_found.value.status == 404
    sim.revoke([conn.org_connection_id])
    with pytest.raises(SimulatorError) as revoked:
        sim.request_export(conn.org_connection_id, "test")
    assert revoked.value.status == 400


@pytest.mark.parametrize(
    ("brand", "behaviour", "delay"),
    [
        ("epic", {"slow": True}, 35 * 60),
        ("cerner", {"slow": True}, 10 * 60),
        ("epic", {}, 0.2),
        ("athena", {"export_delay_seconds": 90}, 90),
    ],
)
def test_export_delays(
    sim: Simulator, brand: str, behaviour: dict[str, object], delay: float
) -> None:
    conn = sim.connect(send_webhook=False, brand=brand, behaviour=behaviour)
    export = sim.request_export(conn.org_connection_id, "test")
    assert export.ready_at - export.created_at == pytest.approx(delay)
    sim.advance_clock(max(0.0, delay - 5))
    assert sim.complete_due_exports() == []
    sim.advance_clock(6)
    assert sim.complete_due_exports() == [export]


def test_behaviour_validation(sim: Simulator) -> None:
    with pytest.raises(SimulatorError):
        Behaviour().updated({"fail_reason": "bogus"})
    with pytest.raises(SimulatorError):
        Behaviour().updated({"scale": 0})
    with pytest.raises(SimulatorError):
        Behaviour().updated({"nope": 1})
    with pytest.raises(SimulatorError):
        sim.connect(behaviour={"truncate_mode": "sometimes"})
    assert Behaviour().updated({"scale": 3}).scale == 3
    for wrong in ({"scale": "many"}, {"export_delay_seconds": "soon"}, {"slow": "maybe"}):
        with pytest.raises(SimulatorError):
            Behaviour().updated(wrong)
    assert Behaviour().updated({"scale": "3", "slow": "true"}) == Behaviour(scale=3, slow=True)


def test_duplicates_are_separate_deliveries_of_one_event(sim: Simulator) -> None:
    sim.connect(behaviour={"duplicate_webhooks": 4})
    deliveries = sim.list_deliveries("patient.connection_success")
    assert len(deliveries) == 4
    assert len({d.event_id for d in deliveries}) == 1


@pytest.mark.parametrize("order", ["fifo", "reverse", "shuffle"])
def test_release_order(sim: Simulator, order: str) -> None:
    sim.hold_webhooks()
    ids = [sim.send_test_webhook() for _ in range(6)]
    assert sim.due_deliveries() == []
    released = sim.release_webhooks(order, seed=1)  # type: ignore[arg-type]
    sent = [d.event_id for d in sim.due_deliveries()]
    assert sent == [d.event_id for d in released]
    if order == "fifo":
        assert sent == ids
    elif order == "reverse":
        assert sent == ids[::-1]
    else:
        assert sorted(sent) == sorted(ids) and sent != ids


def test_retry_schedule_and_giving_up(sim: Simulator) -> None:
    sim.send_test_webhook()
    [delivery] = sim.due_deliveries()
    delays = sim.config.retry_delays()
    assert delays == [0.05, 0.1, 0.2, 0.4]
    for n in range(len(delays)):
        before = sim.clock.now()
        sim.attempt_finished(delivery, Attempt(n + 1, "", 0, 500, None, b"", {}))
        assert delivery.state == "pending"
        assert delivery.next_attempt_at - before == pytest.approx(delays[n], abs=0.05)
        sim.advance_clock(delays[n])
        assert sim.due_deliveries() == [delivery]
    sim.attempt_finished(delivery, Attempt(5, "", 0, None, "ConnectError", b"", {}))
    assert delivery.state == "failed"
    assert sim.due_deliveries() == []


def test_success_ends_the_delivery(sim: Simulator) -> None:
    sim.send_test_webhook()
    [delivery] = sim.due_deliveries()
    sim.attempt_finished(delivery, Attempt(1, "", 0, 204, None, b"", {}))
    assert delivery.state == "delivered"


def test_no_url_means_no_delivery() -> None:
    sim = Simulator(SimulatorConfig.for_tests())
    sim.send_test_webhook()
    assert [d.state for d in sim.list_deliveries()] == ["no_url"]
    assert sim.due_deliveries() == []


def test_file_lifetime_is_24_simulated_hours(sim: Simulator) -> None:
    conn = sim.connect(send_webhook=False)
    export = sim.request_export(conn.org_connection_id, "test")
    assert not sim.file_available(export)
    sim.advance_clock(1)
    sim.complete_due_exports()
    assert sim.file_available(export)
    sim.advance_clock(24 * 3600 - 10)
    assert sim.file_available(export)
    sim.advance_clock(11)
    assert not sim.file_available(export)


def test_stats_mismatch_changes_the_reported_stats(sim: Simulator) -> None:
    conn = sim.connect(send_webhook=False, behaviour={"stats_mismatch": -3})
    export = sim.request_export(conn.org_connection_id, "test")
    sim.advance_clock(1)
    sim.complete_due_exports()
    [success] = sim.list_deliveries("patient.ehi_export_success")
    assert success.data["stats"]["total_resources"] == export.file.stats.total_resources - 3


def test_clock_only_moves_forward(sim: Simulator) -> None:
    with pytest.raises(ValueError):
        sim.clock.advance(-1)
    before = sim.clock.now()
    assert sim.advance_clock(100) >= before + 100
    sim.reset()
    assert sim.clock.offset == 0


def test_signed_attempt_verifies_with_both_implementations(sim: Simulator) -> None:
    sim.send_test_webhook()
    [delivery] = sim.list_deliveries()
    secret = sim.config.modes["test"].webhook_secrets[0]
    body, headers, date, timestamp = signed_attempt(delivery, secret)
    assert Webhook(secret).verify(body, headers)["date"] == date
    assert Verifier([secret]).verify(headers, body).timestamp == timestamp
    later = signed_attempt(delivery, secret, now=timestamp + 61)
    assert later[1]["webhook-timestamp"] != headers["webhook-timestamp"]
    assert later[2] != date
    assert later[1]["webhook-id"] == headers["webhook-id"] == delivery.event_id


def test_storage_signature_binds_path_and_expiry() -> None:
    key = b"k" * 32
    base = signature(key, "/exports/a/export-1.jsonl", 100)
    assert base == signature(key, "/exports/a/export-1.jsonl", 100)
    assert base != signature(key, "/exports/b/export-1.jsonl", 100)
    assert base != signature(key, "/exports/a/export-1.jsonl", 101)
    assert base != signature(b"j" * 32, "/exports/a/export-1.jsonl", 100)


def test_authenticate(sim: Simulator) -> None:
    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert authenticate(sim, basic("public_test_sim:private_test_sim")) == "test"
    assert authenticate(sim, basic("public_live_sim:private_live_sim")) == "live"
    assert authenticate(sim, "Bearer private_live_sim") == "live"
    for bad in (
        None,
        "",
        basic("public_test_sim:private_live_sim"),
        basic("public_test_sim"),
        "Basic %%%",
        "Bearer ",
        "Token private_test_sim",
    ):
        with pytest.raises(Unauthorized):
            authenticate(sim, bad)


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "whsec_" + base64.b64encode(b"from-env").decode()
    monkeypatch.setenv("EHI_TEST_PUBLIC_ID", "public_test_env")
    monkeypatch.setenv("EHI_TEST_PRIVATE_KEY", "private_test_env")
    monkeypatch.setenv("EHI_TEST_WEBHOOK_SECRETS", f"{secret},whsec_b3RoZXI=")
    config = SimulatorConfig.from_env(webhook_url_test="http://x/hook")
    test = config.modes["test"]
    assert (test.public_id, test.private_key) == ("public_test_env", "private_test_env")
    assert test.signing_secret == secret
    assert test.webhook_url == "http://x/hook"
    assert config.mode_for_public_id("public_test_env") == "test"
    assert config.mode_for_public_id("") is None
    assert config.retry_delays() == [30.0, 450.0, 6750.0, 101250.0]


def test_control_api_loopback_check() -> None:
    from ehi_bridge.simulator.control import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("10.0.0.5")
    assert not _is_loopback("example.com")
    assert not _is_loopback(None)


def test_reset_forgets_pending_exports(sim: Simulator) -> None:
    conn = sim.connect(send_webhook=False)
    export = sim.request_export(conn.org_connection_id, "test")
    sim.reset()
    sim.advance_clock(10)
    assert sim.complete_due_exports() == []
    assert export.status == "pending"
    assert sim.list_deliveries() == []


def test_rejected_connection_says_so_and_cannot_export(sim: Simulator) -> None:
    conn = sim.connect(rejected=True)
    [delivery] = sim.list_deliveries("patient.connection_success")
    assert delivery.data["connection_status"] == "rejected"
    with pytest.raises(SimulatorError):
        sim.request_export(conn.org_connection_id, "test")


def test_tefca_connection_lacks_portal_ids(sim: Simulator) -> None:
    sim.connect(tefca=True, external_id="t-1")
    [delivery] = sim.list_deliveries("patient.connection_success")
    assert not {"brand_id", "portal_id", "endpoint_id"} & set(delivery.data)
    assert delivery.data["tefca_directory_id"]
    assert delivery.data["external_id"] == "t-1"
    assert delivery.data["connection_status"] == "authorized"


def test_default_behaviour_applies_to_new_connections_only(sim: Simulator) -> None:
    before = sim.connect(send_webhook=False)
    sim.set_default_behaviour(slow=True, malformed_lines=2)
    after = sim.connect(send_webhook=False)
    explicit = sim.connect(send_webhook=False, behaviour={"scale": 2})
    assert before.behaviour == Behaviour()
    assert (after.behaviour.slow, after.behaviour.malformed_lines) == (True, 2)
    assert (explicit.behaviour.slow, explicit.behaviour.scale) == (False, 2)
    sim.set_behaviour(after.org_connection_id, slow=False)
    assert sim.default_behaviour.slow is True  # a copy, not shared
    with pytest.raises(SimulatorError):
        sim.set_default_behaviour(fail_reason="nope")
    sim.reset()
    assert sim.default_behaviour == Behaviour()


def test_410_disables_the_endpoint_until_enabled(sim: Simulator) -> None:
    sim.send_test_webhook()
    [delivery] = sim.due_deliveries()
    sim.attempt_finished(delivery, Attempt(1, "", 0, 410, None, b"", {}))
    assert delivery.state == "failed"
    assert sim.disabled_endpoints == {"test"}
    sim.send_test_webhook()
    assert sim.due_deliveries() == []
    assert sim.list_deliveries()[1].state == "endpoint_disabled"
    sim.send_test_webhook("live")  # the other mode's endpoint is unaffected
    assert [d.api_mode for d in sim.list_deliveries() if d.state == "no_url"] == ["live"]
    recovered = sim.enable_endpoint("test", recover=True)
    assert len(recovered) == 2
    assert len(sim.due_deliveries()) == 2


def test_endpoint_disabled_after_failed_deliveries_in_a_row() -> None:
    config = SimulatorConfig.for_tests(
        webhook_url_test="http://127.0.0.1:9/hook", disable_after_failed_deliveries=2, max_retries=0
    )
    sim = Simulator(config)
    for expected in (set(), {"test"}):
        sim.send_test_webhook()
        [delivery] = sim.due_deliveries()
        sim.attempt_finished(delivery, Attempt(1, "", 0, 500, None, b"", {}))
        assert delivery.state == "failed"
        assert sim.disabled_endpoints == expected
    sim.enable_endpoint("test")
    assert sim.disabled_endpoints == set()
    sim.reset()
    assert sim.disabled_endpoints == set()
