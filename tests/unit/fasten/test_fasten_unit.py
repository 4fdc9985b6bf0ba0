"""Pure parts of the Fasten client: retry timing, tolerant schemas, length checks, factory."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from ehi_bridge.config import Settings
from ehi_bridge.fasten.client import FastenClient, _content_range, client_for_mode
from ehi_bridge.fasten.errors import (
    DownloadError,
    DownloadRefused,
    FastenNotConfigured,
    FastenProtocolError,
)
from ehi_bridge.fasten.retry import full_jitter, is_retryable_status, parse_retry_after
from ehi_bridge.fasten.schemas import ExportTask, OrgConnection

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("Fri, 15 Jan 2027 08:00:30 GMT", 30.0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # in the past
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    result = parse_retry_after(header, NOW)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_http_date_is_relative_to_the_injected_clock() -> None:
    assert parse_retry_after("Fri, 15 Jan 2027 08:00:30 GMT", NOW + 10) == pytest.approx(20.0)


def test_full_jitter_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        for _ in range(50):
            delay = full_jitter(attempt, 0.5, 30.0, rng)
            assert 0.0 <= delay <= min(30.0, 0.5 * 2 ** (attempt - 1))
    # Spread, not a constant: full jitter draws across the whole interval.
    draws = {round(full_jitter(5, 1.0, 60.0, rng), 3) for _ in range(20)}
    assert len(draws) > 10


@pytest.mark.parametrize(("status", "retry"), [(429, True), (500, True), (503, True), (599, True)])
def test_retryable_statuses(status: int, retry: bool) -> None:
    assert is_retryable_status(status) is retry


@pytest.mark.parametrize("status", [200, 302, 400, 401, 403, 404, 410, 422])
def test_not_retryable_statuses(status: int) -> None:
    assert not is_retryable_status(status)


def test_schemas_tolerate_extra_fields_and_aliases() -> None:
    task = ExportTask.model_validate({"id": "t1", "status": "success", "new_field": {"a": 1}})
    assert (task.task_id, task.status) == ("t1", "success")
    conn = OrgConnection.model_validate(
        {"org_connection_id": "oc", "connection_status": "revoked", "scope": ["a", "b"], "x": 1}
    )
    assert (conn.status, conn.scope) == ("revoked", "a b")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 100-199/1000", (100, 199, 1000)),
        ("bytes */1000", (None, None, 1000)),
        ("bytes 0-9/*", (0, 9, None)),
        ("items 1-2/3", (None, None, None)),
        (None, (None, None, None)),
    ],
)
def test_content_range(value: str | None, expected: tuple[int | None, ...]) -> None:
    assert _content_range(value) == expected


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_client_for_mode_uses_the_mode_credentials_and_allow_list() -> None:
    settings = _settings(
        test_public_id="public_test_1",
        test_private_key=SecretStr("private_test_1"),
        live_public_id="public_live_1",
        live_private_key=SecretStr("private_live_1"),
        fasten_api_url="https://api.example.test/v1/",
        fasten_auth_scheme="bearer",
        download_allowed_hosts=["files.example.test"],
    )
    client = client_for_mode(settings, "live")
    assert client.base_url == "https://api.example.test/v1"
    assert client.auth_scheme == "bearer"
    assert client._authorization == "Bearer private_live_1"
    assert client.allowed_hosts == {"api.example.test", "files.example.test"}


def test_client_for_mode_without_credentials_refuses() -> None:
    with pytest.raises(FastenNotConfigured):
        client_for_mode(_settings(), "test")


def test_basic_header_and_default_allow_list() -> None:
    client = FastenClient("https://API.example.test/v1", "pub", "priv")
    assert client._authorization == "Basic cHViOnByaXY="
    assert client.allowed_hosts == {"api.example.test"}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://evil.test/v1/bridge/fhir/ehi-export/t/download/f", "host_not_allowed"),
        ("ftp://api.example.test/x", "scheme_not_allowed"),
        ("https://u:p@api.example.test/x", "bad_link"),
        ("not a url", "scheme_not_allowed"),
    ],
)
async def test_bad_links_are_refused(url: str, reason: str, tmp_path: Path) -> None:
    async with FastenClient("https://api.example.test/v1", "pub", "priv") as client:
        with pytest.raises(DownloadRefused) as info:
            await client.download(url, tmp_path / "f")
    assert info.value.reason == reason
    assert list(tmp_path.iterdir()) == []


class _Short(httpx.AsyncByteStream):
    """A body that ends cleanly after fewer bytes than its Content-Length announced."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


async def test_clean_end_before_content_length_counts_as_truncated(tmp_path: Path) -> None:
    """Even when the transport reports no error, fewer bytes than announced is a break."""
    data = b"x" * 1000
    seen: list[str | None] = []

    def storage(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("range"))
        return httpx.Response(200, headers={"content-length": "1000"}, stream=_Short(data[:400]))

    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = FastenClient(
        "https://api.example.test/v1",
        "pub",
        "priv",
        allowed_hosts={"files.example.test"},
        max_attempts=2,
        sleep=sleep,
    )
    client._storage = httpx.AsyncClient(transport=httpx.MockTransport(storage))
    async with client:
        with pytest.raises(DownloadError) as info:
            await client.download("https://files.example.test/obj", tmp_path / "f")
    # First attempt: 400 of 1000 bytes; the resumes ask for the rest and make no progress.
    assert info.value.reason == "truncated"
    assert seen[0] is None and seen[1] == "bytes=400-"
    assert list(tmp_path.iterdir()) == []


def _recording_client(
    handler: httpx.MockTransport, allowed: set[str] | None = None
) -> FastenClient:
    client = FastenClient("https://api.example.test/v1", "pub", "priv", allowed_hosts=allowed)
    client._api = httpx.AsyncClient(transport=handler, follow_redirects=False)
    client._storage = httpx.AsyncClient(transport=handler, follow_redirects=False)
    return client


async def test_redirect_may_not_downgrade_to_http(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.host))
        return httpx.Response(302, headers={"location": "http://storage.example.test/o?sig=1"})

    async with _recording_client(httpx.MockTransport(handler)) as client:
        with pytest.raises(DownloadRefused) as info:
            await client.download("https://api.example.test/v1/x/download/f", tmp_path / "f")
    assert (info.value.host, info.value.reason) == ("storage.example.test", "scheme_not_allowed")
    assert seen == ["api.example.test"]


async def test_credentials_go_only_to_the_api_origin(tmp_path: Path) -> None:
    """An allow-listed host that is not the API (or the API host on another port) gets
    no Authorization header; the API origin does."""
    auth: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        auth[f"{request.url.host}:{request.url.port}"] = request.headers.get("authorization")
        return httpx.Response(200, headers={"content-length": "3"}, stream=_Short(b"{}\n"))

    allowed = {"api.example.test", "files.example.test", "api.example.test:8443"}
    async with _recording_client(httpx.MockTransport(handler), allowed) as client:
        await client.download("https://files.example.test/o", tmp_path / "a")
        await client.download("https://api.example.test:8443/o", tmp_path / "b")
        with pytest.raises(FastenProtocolError):  # the API must answer a redirect
            await client.download("https://api.example.test/v1/t/download/f", tmp_path / "c")
    assert auth == {
        "files.example.test:None": None,
        "api.example.test:8443": None,
        "api.example.test:None": "Basic cHViOnByaXY=",
    }
