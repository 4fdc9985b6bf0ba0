"""The SMART sandbox's faults over real HTTP, its stats and its concurrency: slow answers do
not block others; requests in flight are counted per host."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from ehi_bridge.simulator.smart.server import SmartSandbox
from tests.integration.simulator.smart_flow import login, refresh


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _session(http: httpx.Client, smart: SmartSandbox, profile: str = "generic") -> dict[str, str]:
    patient_id = http.get(f"{smart.url}/_smart/patients").json()[1]["id"]
    token = login(http, smart.url, profile, patient_id)
    return {**token, "bearer": f"Bearer {token['access_token']}"}


def _fault(http: httpx.Client, smart: SmartSandbox, **body: Any) -> dict[str, Any]:
    answer = http.post(f"{smart.url}/_smart/faults", json=body)
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_rate_limit(http: httpx.Client, smart: SmartSandbox) -> None:
    s = _session(http, smart)
    url = f"{smart.fhir_base('generic')}/Condition"
    params = {"patient": s["patient"]}
    headers = {"Authorization": s["bearer"]}
    _fault(http, smart, kind="rate_limit", resource_type="Condition", times=2, retry_after=3)
    for _ in range(2):
        limited = http.get(url, params=params, headers=headers)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "3"
    assert http.get(url, params=params, headers=headers).status_code == 200
    # Other types were never limited.
    _fault(http, smart, kind="rate_limit", resource_type="Condition")
    procedures = http.get(f"{smart.fhir_base('generic')}/Procedure", params=params, headers=headers)
    assert procedures.status_code == 200


def test_expire_tokens(http: httpx.Client, smart: SmartSandbox) -> None:
    s = _session(http, smart)
    url = f"{smart.fhir_base('generic')}/Patient/{s['patient']}"
    assert http.get(url, headers={"Authorization": s["bearer"]}).status_code == 200
    assert _fault(http, smart, kind="expire_tokens")["expired"] >= 1
    expired = http.get(url, headers={"Authorization": s["bearer"]})
    assert expired.status_code == 401 and "invalid_token" in expired.headers["www-authenticate"]
    # The refresh token still works and gives a live access token.
    fresh = refresh(http, smart.url, "generic", s["refresh_token"]).json()
    assert (
        http.get(url, headers={"Authorization": f"Bearer {fresh['access_token']}"}).status_code
        == 200
    )


def test_invalid_grant_revokes_the_grant(http: httpx.Client, smart: SmartSandbox) -> None:
    s = _session(http, smart)
    _fault(http, smart, kind="invalid_grant")
    refused = refresh(http, smart.url, "generic", s["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    url = f"{smart.fhir_base('generic')}/Patient/{s['patient']}"
    assert http.get(url, headers={"Authorization": s["bearer"]}).status_code == 401
    # A new authorization is unaffected (the fault answered once).
    other = _session(http, smart)
    again = refresh(http, smart.url, "generic", other["refresh_token"])
    assert again.status_code == 200


def test_forbidden_type(http: httpx.Client, smart: SmartSandbox) -> None:
    s = _session(http, smart)
    headers = {"Authorization": s["bearer"]}
    base = smart.fhir_base("generic")
    _fault(http, smart, kind="forbidden_type", resource_type="DocumentReference")
    for _ in range(2):
        answer = http.get(
            f"{base}/DocumentReference", params={"patient": s["patient"]}, headers=headers
        )
        assert answer.status_code == 403
    assert (
        http.get(f"{base}/Condition", params={"patient": s["patient"]}, headers=headers).status_code
        == 200
    )
    http.delete(f"{smart.url}/_smart/faults").raise_for_status()
    answer = http.get(
        f"{base}/DocumentReference", params={"patient": s["patient"]}, headers=headers
    )
    assert answer.status_code == 200


def test_malformed_json_once(http: httpx.Client, smart: SmartSandbox) -> None:
    s = _session(http, smart)
    headers = {"Authorization": s["bearer"]}
    url = f"{smart.fhir_base('generic')}/Procedure"
    _fault(http, smart, kind="malformed_json", resource_type="Procedure")
    broken = http.get(url, params={"patient": s["patient"]}, headers=headers)
    assert broken.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(broken.content)
    fine = http.get(url, params={"patient": s["patient"]}, headers=headers)
    assert orjson.loads(fine.content)["resourceType"] == "Bundle"


def test_paging_loop(http: httpx.Client, smart: SmartSandbox) -> None:
    s = _session(http, smart)
    headers = {"Authorization": s["bearer"]}
    url = f"{smart.fhir_base('generic')}/Immunization"
    _fault(http, smart, kind="paging_loop", resource_type="Immunization")
    answer = http.get(url, params={"patient": s["patient"], "_count": 2}, headers=headers)
    links = [link["url"] for link in answer.json()["link"] if link["relation"] == "next"]
    first = links[0]
    for _ in range(3):
        answer = http.get(first, headers=headers)
        nxt = [link["url"] for link in answer.json()["link"] if link["relation"] == "next"]
        assert nxt == [first]


def test_slow_answers_do_not_block_others(smart: SmartSandbox) -> None:
    with httpx.Client() as http:
        s = _session(http, smart)
        _fault(http, smart, kind="slow", resource_type="Condition", delay_ms=600)
    headers = {"Authorization": s["bearer"]}
    base = smart.fhir_base("generic")

    async def run() -> tuple[float, float]:
        async with httpx.AsyncClient(headers=headers, timeout=10) as client:
            start = time.monotonic()

            async def timed(url: str, **params: str) -> float:
                answer = await client.get(url, params=params)
                assert answer.status_code == 200
                return time.monotonic() - start

            slow, fast = await asyncio.gather(
                timed(f"{base}/Condition", patient=s["patient"]),
                timed(f"{base}/Patient/{s['patient']}"),
            )
            return slow, fast

    slow, fast = asyncio.run(run())
    assert slow >= 0.6
    assert fast < 0.4


def test_stats_count_requests_and_max_in_flight(smart: SmartSandbox) -> None:
    with httpx.Client() as http:
        http.post(f"{smart.url}/_smart/stats/reset").raise_for_status()
        s = _session(http, smart, "athena")
        _fault(http, smart, kind="slow", delay_ms=300)
    headers = {"Authorization": s["bearer"]}
    base = smart.fhir_base("athena")

    async def run() -> None:
        async with httpx.AsyncClient(headers=headers, timeout=10) as client:
            answers = await asyncio.gather(
                *(
                    client.get(f"{base}/Condition", params={"patient": s["patient"]})
                    for _ in range(5)
                )
            )
            assert all(a.status_code == 200 for a in answers)

    asyncio.run(run())
    stats = httpx.get(f"{smart.url}/_smart/stats").json()
    assert stats["max_in_flight"] == 5
    assert stats["max_in_flight_by_host"] == {"127.0.0.1": 5}
    assert stats["token_requests"]["athena"] == 1
    assert stats["by_path_kind"]["search"] == 5
    assert stats["by_path_kind"]["token"] == 1
    assert stats["by_path_kind"]["authorize"] == 2
    assert stats["requests"] == 8  # control requests are not counted
    reset = httpx.post(f"{smart.url}/_smart/stats/reset").json()
    assert reset["requests"] == 0 and reset["max_in_flight"] == 0


def test_control_api_validates(http: httpx.Client, smart: SmartSandbox) -> None:
    assert http.post(f"{smart.url}/_smart/faults", json={"kind": "nope"}).status_code == 422
    assert (
        http.post(
            f"{smart.url}/_smart/clients", json={"client_id": "x", "auth_method": "private_key_jwt"}
        ).status_code
        == 422
    )
    assert http.get(f"{smart.url}/_smart/patients/unknown/resources").status_code == 404
    assert (
        http.post(f"{smart.url}/_smart/settings", json={"fixed_patient_id": "nope"}).status_code
        == 404
    )
