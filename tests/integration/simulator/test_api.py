"""The REST API over real HTTP: auth, export requests, status, download redirects, expiry."""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from ehi_bridge.simulator import SimulatorServer, build_patient_export
from ehi_bridge.simulator.state import Export
from tests.integration.simulator.conftest import LIVE_AUTH, TEST_AUTH, wait_until


def _export_url(server: SimulatorServer, *parts: str) -> str:
    return "/".join([f"{server.api_url}/v1/bridge/fhir/ehi-export", *parts])


def _done_export(server: SimulatorServer, **behaviour: object) -> Export:
    conn = server.sim.connect(send_webhook=False, behaviour=behaviour or None)
    export = server.sim.request_export(conn.org_connection_id, "test")
    wait_until(lambda: export.status != "pending")
    return export


def _signed_location(server: SimulatorServer, export: Export) -> str:
    response = httpx.get(
        _export_url(server, export.task_id, "download", "export-1.jsonl"), auth=TEST_AUTH
    )
    assert response.status_code == 302
    return response.headers["location"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"public_test_sim:wrong").decode()},
        {
            "Authorization": "Basic "
            + base64.b64encode(b"public_live_sim:private_test_sim").decode()
        },
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer public_test_sim"},
    ],
    ids=["missing", "wrong-key", "mixed-pair", "garbage", "wrong-bearer", "public-as-bearer"],
)
def test_bad_credentials_get_401(simulator: SimulatorServer, headers: dict[str, str]) -> None:
    conn = simulator.sim.connect(send_webhook=False)
    export = simulator.sim.request_export(conn.org_connection_id, "test")
    calls = [
        ("POST", _export_url(simulator), {"org_connection_id": conn.org_connection_id}),
        ("GET", _export_url(simulator, export.task_id), None),
        ("GET", _export_url(simulator, export.task_id, "download", "export-1.jsonl"), None),
        ("GET", f"{simulator.api_url}/v1/bridge/org_connection/{conn.org_connection_id}", None),
    ]
    for method, url, body in calls:
        response = httpx.request(method, url, json=body, headers=headers)
        assert response.status_code == 401, (method, url)
        assert response.json()["success"] is False


def test_basic_and_bearer_both_work(simulator: SimulatorServer) -> None:
    conn = simulator.sim.connect(send_webhook=False)
    url = f"{simulator.api_url}/v1/bridge/org_connection/{conn.org_connection_id}"
    assert httpx.get(url, auth=TEST_AUTH).status_code == 200
    bearer = httpx.get(url, headers={"Authorization": "Bearer private_test_sim"})
    assert bearer.status_code == 200


def test_other_modes_credentials_do_not_see_the_connection(simulator: SimulatorServer) -> None:
    conn = simulator.sim.connect(send_webhook=False)
    url = f"{simulator.api_url}/v1/bridge/org_connection/{conn.org_connection_id}"
    assert httpx.get(url, auth=LIVE_AUTH).status_code == 404
    response = httpx.post(
        _export_url(simulator), json={"org_connection_id": conn.org_connection_id}, auth=LIVE_AUTH
    )
    assert response.status_code == 404


def test_repeat_export_request_returns_the_pending_task(simulator: SimulatorServer) -> None:
    conn = simulator.sim.connect(send_webhook=False, behaviour={"slow": True})
    body = {"org_connection_id": conn.org_connection_id}
    first = httpx.post(_export_url(simulator), json=body, auth=TEST_AUTH)
    second = httpx.post(
        _export_url(simulator), json=body, headers={"Authorization": "Bearer private_test_sim"}
    )
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["success"] is True
    assert first.json()["data"]["status"] == "pending"
    other = simulator.sim.connect(send_webhook=False, behaviour={"slow": True})
    third = httpx.post(
        _export_url(simulator), json={"org_connection_id": other.org_connection_id}, auth=TEST_AUTH
    )
    assert third.json()["data"]["task_id"] != first.json()["data"]["task_id"]


def test_unknown_and_revoked_connections_are_refused(simulator: SimulatorServer) -> None:
    unknown = httpx.post(_export_url(simulator), json={"org_connection_id": "nope"}, auth=TEST_AUTH)
    assert unknown.status_code == 404
    conn = simulator.sim.connect(send_webhook=False)
    simulator.sim.revoke([conn.org_connection_id])
    revoked = httpx.post(
        _export_url(simulator), json={"org_connection_id": conn.org_connection_id}, auth=TEST_AUTH
    )
    assert revoked.status_code == 400
    view = httpx.get(
        f"{simulator.api_url}/v1/bridge/org_connection/{conn.org_connection_id}", auth=TEST_AUTH
    ).json()["data"]
    assert view["status"] == "revoked"


def test_slow_epic_export_stays_pending_until_the_clock_moves(simulator: SimulatorServer) -> None:
    conn = simulator.sim.connect(send_webhook=False, brand="epic", behaviour={"slow": True})
    task_id = httpx.post(
        _export_url(simulator), json={"org_connection_id": conn.org_connection_id}, auth=TEST_AUTH
    ).json()["data"]["task_id"]
    status_url = _export_url(simulator, task_id)
    simulator.sim.advance_clock(34 * 60)
    status = httpx.get(status_url, auth=TEST_AUTH).json()["data"]
    assert status["status"] == "pending"
    assert "download_links" not in status and "download_link" not in status
    simulator.sim.advance_clock(2 * 60)
    wait_until(lambda: httpx.get(status_url, auth=TEST_AUTH).json()["data"]["status"] == "success")
    done = httpx.get(status_url, auth=TEST_AUTH).json()["data"]
    assert not any("download" in key for key in done)


def test_org_connection_view(simulator: SimulatorServer) -> None:
    conn = simulator.sim.connect(send_webhook=False, brand="athena", external_id="u-1")
    data = httpx.get(
        f"{simulator.api_url}/v1/bridge/org_connection/{conn.org_connection_id}", auth=TEST_AUTH
    ).json()["data"]
    for key in ("org_id", "brand_id", "portal_id", "endpoint_id", "scope", "consent_expires_at"):
        assert data[key]
    assert data["platform_type"] == "athena"
    assert data["api_mode"] == "test"
    assert data["status"] == "authorized"


def test_download_redirects_to_a_signed_url_on_another_host(simulator: SimulatorServer) -> None:
    export = _done_export(simulator)
    location = _signed_location(simulator, export)
    parts = urlsplit(location)
    assert parts.hostname == "localhost" != urlsplit(simulator.api_url).hostname
    assert parts.port != urlsplit(simulator.api_url).port
    query = dict(parse_qsl(parts.query))
    assert set(query) == {"X-Sim-Expires", "X-Sim-Signature"}
    assert int(query["X-Sim-Expires"]) == pytest.approx(simulator.sim.clock.now() + 600, abs=5)
    response = httpx.get(location)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+ndjson"
    connection = simulator.sim.connection(export.org_connection_id)
    assert response.content == b"".join(
        build_patient_export(connection.patient_index, seed=export.file.seed)
    )


def test_authorization_never_reaches_storage_when_following_the_redirect(
    simulator: SimulatorServer,
) -> None:
    export = _done_export(simulator)
    url = _export_url(simulator, export.task_id, "download", "export-1.jsonl")
    with httpx.Client(auth=TEST_AUTH, follow_redirects=True) as client:
        response = client.get(url)
    assert response.status_code == 200
    assert response.history[0].status_code == 302
    # The storage server's own record: the credentials stayed with the API host.
    [request] = simulator.sim.list_storage_requests()
    assert request.authorization_present is False
    # And it would have noticed if they had been sent.
    httpx.get(response.url, headers={"Authorization": "Basic eA=="})
    assert simulator.sim.list_storage_requests()[-1].authorization_present is True


def test_expired_url_is_403_and_a_fresh_one_works(simulator: SimulatorServer) -> None:
    export = _done_export(simulator)
    location = _signed_location(simulator, export)
    simulator.sim.advance_clock(601)
    expired = httpx.get(location)
    assert expired.status_code == 403
    assert b"<Code>AccessDenied</Code>" in expired.content
    fresh = _signed_location(simulator, export)
    assert fresh != location
    assert httpx.get(fresh).status_code == 200


@pytest.mark.parametrize("field", ["X-Sim-Expires", "X-Sim-Signature", "path", "drop"])
def test_tampered_url_is_403(simulator: SimulatorServer, field: str) -> None:
    export = _done_export(simulator)
    parts = urlsplit(_signed_location(simulator, export))
    query = dict(parse_qsl(parts.query))
    path = parts.path
    if field == "X-Sim-Expires":
        query[field] = str(int(query[field]) + 3600)
    elif field == "X-Sim-Signature":
        query[field] = ("0" if query[field][0] != "0" else "1") + query[field][1:]
    elif field == "path":
        other = _done_export(simulator)
        path = path.replace(export.task_id, other.task_id)
    else:
        del query["X-Sim-Signature"]
    url = urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))
    response = httpx.get(url)
    assert response.status_code == 403
    assert b"<Error>" in response.content


def test_file_is_gone_24_hours_after_success(simulator: SimulatorServer) -> None:
    export = _done_export(simulator)
    location = _signed_location(simulator, export)
    simulator.sim.advance_clock(23 * 3600)
    assert _signed_location(simulator, export)
    simulator.sim.advance_clock(3600 + 1)
    response = httpx.get(
        _export_url(simulator, export.task_id, "download", "export-1.jsonl"), auth=TEST_AUTH
    )
    assert response.status_code == 404
    assert httpx.get(location).status_code == 403  # and old URLs have long expired


def test_download_of_pending_or_failed_export_is_404(simulator: SimulatorServer) -> None:
    slow = simulator.sim.connect(send_webhook=False, behaviour={"slow": True})
    pending = simulator.sim.request_export(slow.org_connection_id, "test")
    failed = _done_export(simulator, fail_reason="token_refresh_failure")
    for export in (pending, failed):
        response = httpx.get(
            _export_url(simulator, export.task_id, "download", "export-1.jsonl"), auth=TEST_AUTH
        )
        assert response.status_code == 404
    status = httpx.get(_export_url(simulator, failed.task_id), auth=TEST_AUTH).json()["data"]
    assert status["status"] == "failed"
    assert status["failure_reason"] == "token_refresh_failure"
