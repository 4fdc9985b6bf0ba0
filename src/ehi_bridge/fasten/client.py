"""Async client for the Fasten Connect REST API and its export-file downloads.

Security rules this module keeps:

* Credentials (Basic ``public_id:private_key`` or Bearer private key) are attached per
  request, and only when the request goes to the configured API origin (scheme, host,
  port). The storage server behind the download redirect is called by a second
  ``httpx.AsyncClient`` that has no credentials at all.
* A download link (from a webhook), and the storage URL the API redirects it to, are
  fetched only if their host AND port are allowed: the API origin, or an entry of
  ``allowed_hosts`` (``host`` allows that host on its scheme's default port only,
  ``host:port`` that port); otherwise :class:`DownloadRefused` is raised and nothing is
  requested. The redirect target may not downgrade https to http nor carry userinfo.
* Nothing here logs a URL (signed URLs are credentials), a key or a body: only the
  operation, task id, status codes, attempt numbers and byte counts.

Downloads stream to ``.{name}.part`` beside ``dest`` and are renamed into place once the
byte count matches what the server announced. A 403 from storage (expired signature) or a
broken transfer gets a fresh signed URL from the API and continues with ``Range``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import httpx
import structlog
from pydantic import ValidationError

from ehi_bridge.config import Mode, Settings
from ehi_bridge.fasten.errors import (
    DownloadError,
    DownloadRefused,
    ExportFileGone,
    FastenApiError,
    FastenAuthError,
    FastenNotConfigured,
    FastenNotFound,
    FastenProtocolError,
    FastenUnavailable,
)
from ehi_bridge.fasten.retry import full_jitter, is_retryable_status, parse_retry_after
from ehi_bridge.fasten.schemas import DownloadResult, ExportTask, OrgConnection

log = structlog.get_logger(__name__)

AuthScheme = Literal["basic", "bearer"]
Sleep = Callable[[float], Awaitable[None]]
M = TypeVar("M", ExportTask, OrgConnection)
Progress = Callable[[int, int | None], None]
"""Called after each chunk with (bytes written so far, total bytes if known)."""

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_BASE = 1.0
MAX_BACKOFF_SECONDS = 60.0
MAX_RETRY_AFTER_SECONDS = 300.0
USER_AGENT = "ehi-bridge"

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)
_TASK_IN_PATH = re.compile(r"/ehi-export/([^/]+)/download/")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _default_port(scheme)


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """(first byte, last byte, total) of a ``Content-Range`` header; None where absent/*."""
    if not value:
        return None, None, None
    match = _CONTENT_RANGE.match(value)
    if not match:
        return None, None, None
    first, last, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(last) if last is not None else None,
        int(total) if total not in (None, "*") else None,
    )


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


class _Retry(Exception):  # internal control flow, never escapes download()
    """One storage attempt failed in a way a fresh URL (and maybe a pause) can fix."""

    def __init__(
        self, reason: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class _PartFile:
    """The ``.part`` file a download writes to; renamed over ``dest`` when complete."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.path = dest.with_name(f".{dest.name}.part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = open(self.path, "wb")  # noqa: SIM115 - closed in finish/discard
        self.written = 0
        self.restarts = 0
        self.resumes = 0

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)
        self.written += len(chunk)

    def reset(self) -> None:
        """Start over from byte 0 (the server ignored ``Range`` or sent the wrong range)."""
        assert self._file is not None
        self._file.seek(0)
        self._file.truncate()
        self.written = 0
        self.restarts += 1

    def finish(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self.path, self.dest)
        with contextlib.suppress(OSError):
            fd = os.open(self.dest.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class FastenClient:
    """One mode's view of the Fasten Connect API. Use as ``async with``; cheap to build."""

    def __init__(
        self,
        base_url: str,
        public_id: str,
        private_key: str,
        auth_scheme: AuthScheme = "basic",
        allowed_hosts: set[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        sleep: Sleep = asyncio.sleep,
        *,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        max_retry_after: float = MAX_RETRY_AFTER_SECONDS,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if auth_scheme not in ("basic", "bearer"):
            raise ValueError("auth_scheme must be 'basic' or 'bearer'")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._api_origin = _origin(self.base_url)
        if self._api_origin[0] not in ("http", "https") or not self._api_origin[1]:
            raise ValueError("base_url must be an absolute http(s) URL")
        self.auth_scheme: AuthScheme = auth_scheme
        if auth_scheme == "basic":
            token = base64.b64encode(f"{public_id}:{private_key}".encode()).decode("ascii")
            self._authorization = f"Basic {token}"
        else:
            self._authorization = f"Bearer {private_key}"
        self.allowed_hosts = (
            {h.lower() for h in allowed_hosts}
            if allowed_hosts is not None
            else {self._api_origin[1]}
        )
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        http_timeout = httpx.Timeout(timeout)
        # The API client: never follows redirects (the download redirect is read by hand).
        self._api = httpx.AsyncClient(
            timeout=http_timeout,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )
        # The storage client: a separate connection pool with no credentials whatsoever.
        self._storage = httpx.AsyncClient(
            timeout=http_timeout,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    # --- lifecycle -----------------------------------------------------------------------

    def _allowed(self, scheme: str, host: str, port: int | None) -> bool:
        port = port or _default_port(scheme)
        if (scheme, host, port) == self._api_origin:
            return True
        for entry in self.allowed_hosts:
            name, sep, fixed = entry.rpartition(":")
            if sep and fixed.isdigit() and not name.endswith(":"):  # host:port (not bare IPv6)
                if (name.strip("[]"), int(fixed)) == (host, port):
                    return True
            elif entry.strip("[]") == host and port == _default_port(scheme):
                return True
        return False

    def _check_origin(self, url: str, reason: str) -> None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port
        except ValueError:
            raise DownloadRefused(host or "?", reason) from None
        if not self._allowed(parts.scheme.lower(), host, port):
            raise DownloadRefused(host, reason)

    async def __aenter__(self) -> FastenClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._storage.aclose()

    # --- API calls -----------------------------------------------------------------------

    async def create_export(self, org_connection_id: str) -> ExportTask:
        """Ask Fasten to collect the connection's records (idempotent on Fasten's side)."""
        response = await self._api_call(
            "POST",
            f"{self.base_url}/bridge/fhir/ehi-export",
            "create_export",
            json={"org_connection_id": org_connection_id},
        )
        task = self._parse(response, ExportTask, "create_export")
        log.info("fasten export requested", task_id=task.task_id, status=task.status)
        return task

    async def export_status(self, task_id: str) -> ExportTask:
        """The task's status (``pending``/``success``/``failed``); never carries links."""
        response = await self._api_call(
            "GET",
            f"{self.base_url}/bridge/fhir/ehi-export/{quote(task_id, safe='')}",
            "export_status",
            task_id=task_id,
        )
        data = self._data(response, "export_status")
        data.setdefault("task_id", task_id)
        return self._model(ExportTask, data, "export_status")

    async def org_connection(self, org_connection_id: str) -> OrgConnection:
        response = await self._api_call(
            "GET",
            f"{self.base_url}/bridge/org_connection/{quote(org_connection_id, safe='')}",
            "org_connection",
        )
        data = self._data(response, "org_connection")
        data.setdefault("org_connection_id", org_connection_id)
        return self._model(OrgConnection, data, "org_connection")

    # --- download ------------------------------------------------------------------------

    async def download(
        self, download_url: str, dest: Path, progress: Progress | None = None
    ) -> DownloadResult:
        """Fetch an export file to ``dest`` (atomically: ``.part`` file, fsync, rename).

        Raises :class:`DownloadRefused` (host off the allow-list; nothing was requested),
        :class:`ExportFileGone` (404/410 from the API download route),
        :class:`FastenUnavailable` (the API kept failing), :class:`FastenAuthError`, or
        :class:`DownloadError` (the transfer kept breaking without progress).
        """
        self._check_link(download_url)
        task_id = self._task_of(download_url)
        part = _PartFile(Path(dest))
        failures = 0  # consecutive storage attempts that added no byte
        transfers = 0
        max_transfers = max(20, self.max_attempts * 4)
        try:
            while True:
                storage_url = await self._signed_url(download_url, task_id)
                before = part.written
                transfers += 1
                try:
                    await self._fetch(storage_url, part, progress)
                    break
                except _Retry as retry:
                    failures = 0 if part.written > before else failures + 1
                    log.info(
                        "fasten download interrupted",
                        task_id=task_id,
                        reason=retry.reason,
                        status=retry.status,
                        bytes_written=part.written,
                        attempt=transfers,
                    )
                    if failures >= self.max_attempts or transfers >= max_transfers:
                        raise DownloadError(retry.reason, part.written) from None
                    if failures:
                        await self._sleep(self._delay(failures, retry.retry_after, "download"))
            await asyncio.to_thread(part.finish)
        except BaseException:
            part.discard()
            raise
        log.info(
            "fasten download complete",
            task_id=task_id,
            bytes=part.written,
            resumes=part.resumes,
            restarts=part.restarts,
        )
        return DownloadResult(
            bytes=part.written, path=part.dest, restarts=part.restarts, resumes=part.resumes
        )

    def _check_link(self, url: str) -> None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme.lower() not in ("http", "https") or not host:
            raise DownloadRefused(host or "?", "scheme_not_allowed")
        if parts.username is not None or parts.password is not None:
            raise DownloadRefused(host, "bad_link")
        self._check_origin(url, "host_not_allowed")

    @staticmethod
    def _task_of(url: str) -> str | None:
        match = _TASK_IN_PATH.search(urlsplit(url).path)
        return match.group(1) if match else None

    def _is_api(self, url: str) -> bool:
        return _origin(url) == self._api_origin

    async def _signed_url(self, download_url: str, task_id: str | None) -> str:
        """A fresh short-lived storage URL: the API download route's redirect target."""
        if not self._is_api(download_url):
            # An allow-listed host that is not the API: fetched as is, without credentials.
            return download_url
        response = await self._api_call(
            "GET", download_url, "download_link", task_id=task_id, stream=True
        )
        try:
            status = response.status_code
            if status in (404, 410):
                raise ExportFileGone(status)
            if status in (301, 302, 303, 307, 308):
                location: str | None = response.headers.get("location")
                if not location:
                    raise FastenProtocolError("download_link: redirect without Location")
                target: str = urljoin(download_url, location)
                self._check_redirect(target)
                return target
            self._raise_for_status(response, "download_link")
            raise FastenProtocolError(f"download_link: expected a redirect, got HTTP {status}")
        finally:
            await response.aclose()

    def _check_redirect(self, target: str) -> None:
        parts = urlsplit(target)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        if scheme not in ("http", "https") or not host:
            raise DownloadRefused(host or "?", "bad_redirect")
        if self._api_origin[0] == "https" and scheme != "https":
            raise DownloadRefused(host, "scheme_not_allowed")
        if parts.username is not None or parts.password is not None:
            raise DownloadRefused(host, "bad_redirect")
        self._check_origin(target, "redirect_not_allowed")

    async def _fetch(self, url: str, part: _PartFile, progress: Progress | None) -> None:
        """One GET of the storage URL, from ``part.written`` on. Raises :class:`_Retry`."""
        offset = part.written
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        expected: int | None = None
        try:
            async with self._storage.stream("GET", url, headers=headers) as response:
                expected, complete = self._expected_size(response, part, offset)
                if complete:
                    return
                async for chunk in response.aiter_raw():  # as received: no buffering
                    part.write(chunk)
                    if expected is not None and part.written > expected:
                        part.reset()
                        raise _Retry("overlong", response.status_code)
                    if progress is not None:
                        progress(part.written, expected)
        except httpx.TransportError as exc:
            raise _Retry(f"broken:{type(exc).__name__}") from None
        if expected is not None and part.written < expected:
            raise _Retry("truncated")
        if expected is None:
            log.warning("fasten download had no length to check", bytes=part.written)

    def _expected_size(
        self, response: httpx.Response, part: _PartFile, offset: int
    ) -> tuple[int | None, bool]:
        """Check the storage answer: (the whole file's size if known, already complete)."""
        status = response.status_code
        if status in (401, 403):
            raise _Retry("storage_denied", status)  # expired signature: get a fresh URL
        if status in (404, 410):
            raise _Retry("storage_not_found", status)  # the API decides if it is gone
        if is_retryable_status(status):
            retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock())
            raise _Retry("storage_unavailable", status, retry_after)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise DownloadError("storage sent an encoded body", part.written)
        length = _content_length(response)
        first, _last, total = _content_range(response.headers.get("content-range"))
        if status == 416 and offset:
            if total == offset:
                return total, True  # a range starting at the end: nothing was missing
            part.reset()
            raise _Retry("range_not_satisfiable", status)
        if status == 206:
            if first != part.written:
                part.reset()
                raise _Retry("unexpected_range", status)
            if offset:
                part.resumes += 1
            if total is not None:
                return total, False
            return (part.written + length if length is not None else None), False
        if status == 200:
            if offset:
                part.reset()  # the server ignored Range: take the whole file again
            return length, False
        raise DownloadError(f"storage answered HTTP {status}", part.written)

    # --- plumbing ------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: float | None, operation: str) -> float:
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                raise FastenUnavailable(
                    operation, attempt, last_error="retry_after_too_long", retry_after=retry_after
                )
            return retry_after
        return full_jitter(attempt, self.backoff_base, self.max_backoff, self._rng)

    async def _api_call(
        self,
        method: str,
        url: str,
        operation: str,
        *,
        json: Any = None,
        task_id: str | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with credentials (API origin only), retrying 429/5xx/network errors."""
        if not self._is_api(url):  # pragma: no cover - guarded by the callers
            raise DownloadRefused(_origin(url)[1] or "?", "host_not_allowed")
        last_status: int | None = None
        last_error: str | None = None
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            request = self._api.build_request(
                method, url, json=json, headers={"Authorization": self._authorization}
            )
            try:
                response = await self._api.send(request, stream=stream)
            except httpx.TransportError as exc:
                last_status, last_error = None, type(exc).__name__
            else:
                if not is_retryable_status(response.status_code):
                    return response
                last_status, last_error = response.status_code, None
                retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock())
                await response.aclose()
            if attempt == self.max_attempts:
                break
            delay = self._delay(attempt, retry_after, operation)
            log.info(
                "fasten call retrying",
                operation=operation,
                task_id=task_id,
                attempt=attempt,
                status=last_status,
                error_type=last_error,
                delay_seconds=round(delay, 3),
            )
            await self._sleep(delay)
        log.warning(
            "fasten call gave up",
            operation=operation,
            task_id=task_id,
            attempts=self.max_attempts,
            status=last_status,
            error_type=last_error,
        )
        raise FastenUnavailable(operation, self.max_attempts, last_status, last_error)

    @staticmethod
    def _raise_for_status(response: httpx.Response, operation: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in (401, 403):
            raise FastenAuthError(status, operation)
        if status == 404:
            raise FastenNotFound(status, operation)
        raise FastenApiError(status, operation)

    def _data(self, response: httpx.Response, operation: str) -> dict[str, Any]:
        self._raise_for_status(response, operation)
        try:
            payload = response.json()
        except ValueError:
            raise FastenProtocolError(f"{operation}: answer is not JSON") from None
        if not isinstance(payload, dict):
            raise FastenProtocolError(f"{operation}: answer is not a JSON object")
        if payload.get("success") is False:
            raise FastenApiError(response.status_code, operation)
        data = payload.get("data", payload)
        if not isinstance(data, dict):
            raise FastenProtocolError(f"{operation}: 'data' is not an object")
        return dict(data)

    @staticmethod
    def _model(model: type[M], data: dict[str, Any], op: str) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            fields = ",".join(str(e["loc"][0]) for e in exc.errors() if e.get("loc"))
            raise FastenProtocolError(f"{op}: unexpected answer (fields: {fields})") from None

    def _parse(self, response: httpx.Response, model: type[M], operation: str) -> M:
        return self._model(model, self._data(response, operation), operation)


def client_for_mode(settings: Settings, mode: Mode, **overrides: Any) -> FastenClient:
    """A client for ``mode`` built from Settings (credentials, API URL, auth scheme,
    download allow-list). ``overrides`` go to :class:`FastenClient` (e.g. ``sleep``)."""
    public_id, private_key = settings.credentials(mode)
    if not private_key or (settings.fasten_auth_scheme == "basic" and not public_id):
        raise FastenNotConfigured(f"no Fasten API credentials configured for mode {mode!r}")
    kwargs: dict[str, Any] = {
        "base_url": settings.fasten_api_url,
        "public_id": public_id,
        "private_key": private_key,
        "auth_scheme": settings.fasten_auth_scheme,
        "allowed_hosts": settings.allowed_download_hosts(),
    }
    kwargs.update(overrides)
    return FastenClient(**kwargs)
