"""The FHIR client's retries and failure reasons (respx: no sandbox at this level)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx

from ehi_bridge.sources.fetch import FhirClient, HostLimiter, SyncError, retry_after_seconds

BASE = "https://ehr.example/fhir"


class Tokens:
    def __init__(self) -> None:
        self.refreshed = 0

    async def token(self) -> str:
        return "t1"

    async def rejected(self, token: str) -> str:
        self.refreshed += 1
        return "t2"


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds(httpx.Headers({"Retry-After": "3"}), now) == 3
    assert retry_after_seconds(
        httpx.Headers({"Retry-After": "Tue, 14 Nov 2023 22:13:30 GMT"}), now
    ) == pytest.approx(10, abs=1)
    assert retry_after_seconds(httpx.Headers({"X-RateLimit-Reset": str(now + 7)}), now) == 7
    assert retry_after_seconds(httpx.Headers({"X-RateLimit-Reset": "2"}), now) == 2
    assert retry_after_seconds(httpx.Headers({"Retry-After": "soon"}), now) is None


def _client(
    http: httpx.AsyncClient, waits: list[float], tokens: Tokens | None = None
) -> FhirClient:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return FhirClient(
        http, BASE, tokens or Tokens(), HostLimiter(5), max_retries=3, max_wait=30, sleep=sleep
    )


@respx.mock
def test_429_and_503_are_waited_out_as_asked() -> None:
    route = respx.get(f"{BASE}/Patient/1").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "2"}),
            httpx.Response(503, headers={"X-RateLimit-Reset": "4"}),
            httpx.Response(200, json={"resourceType": "Patient", "id": "1"}),
        ]
    )
    waits: list[float] = []

    async def run() -> None:
        async with httpx.AsyncClient() as http:
            answer = await _client(http, waits).get("Patient/1")
            assert answer.status == 200

    asyncio.run(run())
    assert waits == [2.0, 4.0] and route.call_count == 3


@pytest.mark.parametrize(
    ("responses", "reason"),
    [
        ([httpx.Response(429, headers={"Retry-After": "3600"})], "rate_limited"),
        ([httpx.Response(500)] * 4, "server_error"),
        ([httpx.Response(401)] * 2, "unauthorized"),
        ([httpx.Response(403)], "forbidden"),
        ([httpx.Response(404)], "not_found"),
        ([httpx.Response(400)], "bad_request"),
    ],
)
@respx.mock
def test_failures_map_to_reasons(responses: list[httpx.Response], reason: str) -> None:
    respx.get(f"{BASE}/Condition").mock(side_effect=responses)
    tokens = Tokens()

    async def run() -> None:
        async with httpx.AsyncClient() as http:
            await _client(http, [], tokens).get("Condition", {"patient": "1"})

    with pytest.raises(SyncError) as failed:
        asyncio.run(run())
    assert failed.value.reason == reason
    assert tokens.refreshed == (1 if reason == "unauthorized" else 0)


@respx.mock
def test_a_link_to_another_host_never_gets_the_token() -> None:
    other = respx.get("https://elsewhere.example/fhir/Patient").mock(
        return_value=httpx.Response(200)
    )

    async def run() -> None:
        async with httpx.AsyncClient() as http:
            await _client(http, []).get("https://elsewhere.example/fhir/Patient")

    with pytest.raises(SyncError) as failed:
        asyncio.run(run())
    assert failed.value.reason == "off_host" and other.call_count == 0


@respx.mock
def test_at_most_five_in_flight_per_host() -> None:
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json={})

    respx.get(url__startswith=f"{BASE}/Observation/").mock(side_effect=slow)

    async def run() -> None:
        async with httpx.AsyncClient() as http:
            client = _client(http, [])
            await asyncio.gather(*(client.get(f"Observation/{i}") for i in range(30)))

    asyncio.run(run())
    assert peak == 5
