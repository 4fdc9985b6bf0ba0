"""FHIR GETs for a sync: bearer tokens, at most N in flight per host, 429/503 honoured
through ``Retry-After``/``X-RateLimit-Reset`` with backoff, and errors mapped to failure
reasons. No database here: tokens come from a :class:`TokenProvider`.

Nothing waits while holding a slot: a request holds its host's slot only while it is on
the wire; a backoff sleeps (``asyncio.sleep``) with the slot released.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import httpx

FHIR_JSON = "application/fhir+json"
ACCEPT = f"{FHIR_JSON}, application/json;q=0.9"
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class FailureReason:
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    NETWORK_ERROR = "network_error"
    INVALID_RESPONSE = "invalid_response"
    PAGING_LOOP = "paging_loop"
    REAUTH_REQUIRED = "reauth_required"
    OFF_HOST = "off_host"  # a link pointing away from the FHIR server (never sent a token)


# Reasons that end the whole sync; the others end one search and are reported.
FATAL = frozenset(
    {
        FailureReason.UNAUTHORIZED,
        FailureReason.RATE_LIMITED,
        FailureReason.SERVER_ERROR,
        FailureReason.NETWORK_ERROR,
        FailureReason.REAUTH_REQUIRED,
    }
)


class SyncError(Exception):
    def __init__(self, reason: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status = status

    @property
    def fatal(self) -> bool:
        return self.reason in FATAL


class TokenProvider(Protocol):
    async def token(self) -> str: ...

    async def rejected(self, token: str) -> str:
        """The server refused ``token``: a fresh one (refreshing once, for everyone)."""
        ...


@dataclass
class HostLimiter:
    """At most ``per_host`` requests in flight to one host, per process (and the peak)."""

    per_host: int = 5
    _slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)

    def slot(self, host: str) -> asyncio.Semaphore:
        sem = self._slots.get(host)
        if sem is None:
            sem = self._slots[host] = asyncio.Semaphore(self.per_host)
        return sem

    def enter(self, host: str) -> None:
        now = self._in_flight.get(host, 0) + 1
        self._in_flight[host] = now
        self.peak[host] = max(self.peak.get(host, 0), now)

    def leave(self, host: str) -> None:
        self._in_flight[host] -= 1


def retry_after_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``X-RateLimit-Reset``
    (seconds, or an epoch time). Pure."""
    now = time.time() if now is None else now
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        if value.replace(".", "", 1).isdigit():
            return max(0.0, float(value))
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - now)
    reset = headers.get("x-ratelimit-reset")
    if reset and reset.strip().replace(".", "", 1).isdigit():
        number = float(reset.strip())
        return max(0.0, number - now) if number > 1_000_000_000 else number
    return None


def backoff_seconds(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    return float(min(cap, base * 2 ** (attempt - 1))) * (0.8 + 0.4 * random.random())


@dataclass(frozen=True, slots=True)
class Answer:
    url: str
    status: int
    content_type: str
    body: bytes

    @property
    def is_json(self) -> bool:
        kind = self.content_type.split(";", 1)[0].strip().lower()
        return kind in ("application/json", FHIR_JSON) or kind.endswith("+json")


@dataclass
class FetchStats:
    requests: int = 0
    retries: int = 0
    waited_seconds: float = 0.0
    token_refreshes: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class FhirClient:
    """GETs against one FHIR base with the connection's token."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        tokens: TokenProvider,
        limiter: HostLimiter,
        *,
        headers: dict[str, str] | None = None,
        max_retries: int = 6,
        max_wait: float = 120.0,
        pace: Callable[[], Awaitable[None]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc.lower()
        self.tokens = tokens
        self.limiter = limiter
        self.headers = dict(headers or {})
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.pace = pace
        self.sleep = sleep
        self.stats = FetchStats()

    def on_host(self, url: str) -> bool:
        return urlsplit(url).netloc.lower() == self.host

    def absolute(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    async def get(
        self, path_or_url: str, params: dict[str, str] | None = None, accept: str = ACCEPT
    ) -> Answer:
        """One GET, retried on 429/503/5xx/network errors; raises :class:`SyncError`."""
        url = self.absolute(path_or_url)
        if not self.on_host(url):
            raise SyncError(FailureReason.OFF_HOST, "link points to another host")
        token = await self.tokens.token()
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            if self.pace is not None:
                await self.pace()
            slot = self.limiter.slot(self.host)
            try:
                async with slot:
                    self.limiter.enter(self.host)
                    try:
                        self.stats.requests += 1
                        response = await self.http.get(
                            url,
                            params=params,
                            headers={
                                **self.headers,
                                "Accept": accept,
                                "Authorization": f"Bearer {token}",
                            },
                        )
                        body = response.content
                    finally:
                        self.limiter.leave(self.host)
            except httpx.HTTPError as exc:
                if attempt > self.max_retries:
                    raise SyncError(FailureReason.NETWORK_ERROR, type(exc).__name__) from None
                await self._wait(backoff_seconds(attempt))
                continue
            status = response.status_code
            self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
            if status == 200:
                return Answer(
                    str(response.url), status, response.headers.get("content-type", ""), body
                )
            if status == 401:
                if refreshed:
                    raise SyncError(FailureReason.UNAUTHORIZED, "token refused", status)
                refreshed = True
                self.stats.token_refreshes += 1
                token = await self.tokens.rejected(token)
                continue
            if status in (429, 503) or status >= 500:
                wait = retry_after_seconds(response.headers)
                reason = FailureReason.RATE_LIMITED if status == 429 else FailureReason.SERVER_ERROR
                if attempt > self.max_retries:
                    raise SyncError(reason, f"still {status} after {attempt} attempts", status)
                if wait is None:
                    wait = backoff_seconds(attempt)
                if wait > self.max_wait:
                    raise SyncError(reason, f"asked to wait {wait:.0f}s", status)
                await self._wait(wait)
                continue
            if status == 403:
                raise SyncError(FailureReason.FORBIDDEN, "", status)
            if status in (404, 410):
                raise SyncError(FailureReason.NOT_FOUND, "", status)
            raise SyncError(FailureReason.BAD_REQUEST, f"status {status}", status)

    async def _wait(self, seconds: float) -> None:
        self.stats.retries += 1
        self.stats.waited_seconds += seconds
        await self.sleep(seconds)
