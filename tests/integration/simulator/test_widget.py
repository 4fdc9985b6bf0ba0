"""The Connect widget stand-in's server side: stitch.js, catalog, connect (CORS), page."""

from __future__ import annotations

import httpx
import orjson
from standardwebhooks import Webhook

from ehi_bridge.simulator import SimulatorServer
from tests.integration.simulator.conftest import Receiver, wait_until

APP_ORIGIN = "http://app.example:8000"


def test_stitch_js_defines_the_element(simulator: SimulatorServer) -> None:
    response = httpx.get(f"{simulator.api_url}/stitch.js", headers={"Origin": APP_ORIGIN})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert response.headers["access-control-allow-origin"] == "*"
    js = response.text
    assert 'customElements.define("fasten-stitch-element"' in js
    assert '"eventBus"' in js
    for event in (
        "widget.complete",
        "widget.config_error",
        "widget.close",
        "patient.connection_success",
        "patient.connection_pending",
    ):
        assert f'"{event}"' in js
    for attribute in ("public-id", "external-id", "reconnect-org-connection-id"):
        assert f'"{attribute}"' in js


def test_catalog_refuses_an_unknown_public_id(simulator: SimulatorServer) -> None:
    wrong = httpx.get(
        f"{simulator.api_url}/stitch/catalog",
        params={"public_id": "public_test_wrong"},
        headers={"Origin": APP_ORIGIN},
    )
    assert wrong.status_code == 401
    assert wrong.headers["access-control-allow-origin"] == "*"
    assert httpx.get(f"{simulator.api_url}/stitch/catalog").status_code == 401


def test_catalog_lists_brands_and_patients(simulator: SimulatorServer) -> None:
    catalog = httpx.get(
        f"{simulator.api_url}/stitch/catalog", params={"public_id": "public_live_sim"}
    ).json()
    assert catalog["api_mode"] == "live"
    assert {"epic", "cerner", "athena"} <= {b["platform_type"] for b in catalog["brands"]}
    assert len(catalog["patients"]) == 13


def test_connect_preflight_allows_a_cross_origin_post(simulator: SimulatorServer) -> None:
    response = httpx.options(
        f"{simulator.api_url}/stitch/connect",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", APP_ORIGIN)
    assert "POST" in response.headers["access-control-allow-methods"]


def test_login_creates_a_connection_and_sends_the_webhook(
    simulator: SimulatorServer, receiver: Receiver
) -> None:
    response = httpx.post(
        f"{simulator.api_url}/stitch/connect",
        json={
            "public_id": "public_test_sim",
            "external_id": "user-7",
            "brand_id": "brand-athena",
            "patient_index": 4,
        },
        headers={"Origin": APP_ORIGIN},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    result = response.json()
    assert result["api_mode"] == "test"
    complete = result["widget_complete"]
    assert set(complete) == {
        "org_connection_id",
        "endpoint_id",
        "brand_id",
        "portal_id",
        "platform_type",
        "external_id",
    }
    assert complete["external_id"] == "user-7"
    assert complete["platform_type"] == "athena"
    conn = simulator.sim.connection(complete["org_connection_id"])
    assert conn.patient_index == 4

    wait_until(lambda: receiver.received)
    secret = simulator.config.modes["test"].webhook_secrets[0]
    event = Webhook(secret).verify(receiver.received[0].body, receiver.received[0].headers)
    assert event["type"] == "patient.connection_success"
    assert event["data"]["org_connection_id"] == complete["org_connection_id"]
    assert event["data"]["external_id"] == "user-7"
    assert event["data"] == result["connection_success"]


def test_login_without_external_id_omits_it(simulator: SimulatorServer, receiver: Receiver) -> None:
    result = httpx.post(
        f"{simulator.api_url}/stitch/connect",
        json={"public_id": "public_test_sim", "brand_id": "brand-epic"},
    ).json()
    assert "external_id" not in result["widget_complete"]
    wait_until(lambda: receiver.received)
    assert "external_id" not in orjson.loads(receiver.received[0].body)["data"]


def test_login_with_a_wrong_public_id_is_refused(simulator: SimulatorServer) -> None:
    response = httpx.post(
        f"{simulator.api_url}/stitch/connect",
        json={"public_id": "public_test_wrong", "brand_id": "brand-epic"},
    )
    assert response.status_code == 401
    assert simulator.sim.list_connections() == []


def test_reconnect_reuses_the_connection(simulator: SimulatorServer) -> None:
    conn = simulator.sim.connect(send_webhook=False)
    simulator.sim.revoke([conn.org_connection_id])
    result = httpx.post(
        f"{simulator.api_url}/stitch/connect",
        json={
            "public_id": "public_test_sim",
            "brand_id": "brand-epic",
            "reconnect_org_connection_id": conn.org_connection_id,
        },
    ).json()
    assert result["widget_complete"]["org_connection_id"] == conn.org_connection_id
    assert simulator.sim.connection(conn.org_connection_id).status == "authorized"


def test_widget_page_hosts_the_element(simulator: SimulatorServer) -> None:
    page = httpx.get(
        f"{simulator.api_url}/widget", params={"external_id": 'x"><script>alert(1)</script>'}
    )
    assert page.status_code == 200
    assert '<script src="/stitch.js"></script>' in page.text
    assert 'public-id="public_test_sim"' in page.text
    assert "<script>alert(1)" not in page.text
