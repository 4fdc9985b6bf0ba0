"""The object-storage stand-in: signed, expiring URLs, ``Range`` requests, broken transfers.

A plain ASGI app (not FastAPI) so that it controls every byte it sends. Like S3, a bad or
expired signature answers 403 with an XML error; a missing object answers 404. It records
each request (path without the query, whether an ``Authorization`` header arrived, the
``Range`` header) so tests can check that the client never forwarded its Fasten credentials.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any
from urllib.parse import parse_qs, quote

from ehi_bridge.simulator.state import Export, Simulator, StorageRequest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CHUNK = 64 * 1024
_PATH_RE = re.compile(r"^/exports/(?P<task>[A-Za-z0-9-]+)/(?P<file>[A-Za-z0-9._-]+)$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class TruncatedTransfer(Exception):
    """Raised after the configured number of bytes: the server then drops the connection."""


def storage_path(export: Export) -> str:
    return f"/exports/{export.task_id}/{export.file_name}"


def signature(key: bytes, path: str, expires: int) -> str:
    return hmac.new(key, f"GET\n{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_url(sim: Simulator, export: Export) -> str:
    """A fresh URL on the storage host, valid ``download_url_ttl_seconds`` (simulated)."""
    path = storage_path(export)
    expires = int(sim.clock.now() + sim.config.download_url_ttl_seconds)
    sig = signature(sim.config.storage_key, path, expires)
    return f"{sim.storage_base_url}{quote(path)}?X-Sim-Expires={expires}&X-Sim-Signature={sig}"


def _xml_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()


def _rechunk(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


class StorageApp:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        method: str = scope["method"]
        range_header = headers.get("range")

        def record(status: int) -> None:
            self.sim.record_storage_request(
                StorageRequest(
                    path=path,
                    method=method,
                    authorization_present="authorization" in headers,
                    range=range_header,
                    status=status,
                    at=self.sim.clock.now(),
                )
            )

        async def error(status: int, code: str, message: str) -> None:
            record(status)
            body = _xml_error(code, message)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/xml"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        if method not in ("GET", "HEAD"):
            return await error(405, "MethodNotAllowed", "Method not allowed")
        match = _PATH_RE.match(path)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        expires_text = (query.get("X-Sim-Expires") or [""])[0]
        given = (query.get("X-Sim-Signature") or [""])[0]
        if match is None or not expires_text.isdigit() or not given:
            return await error(403, "AccessDenied", "Query-string authentication required")
        expires = int(expires_text)
        expected = signature(self.sim.config.storage_key, path, expires)
        if not hmac.compare_digest(expected, given):
            return await error(403, "SignatureDoesNotMatch", "The request signature does not match")
        if self.sim.clock.now() > expires:
            return await error(403, "AccessDenied", "Request has expired")
        export = self.sim.exports.get(match.group("task"))
        if (
            export is None
            or match.group("file") != export.file_name
            or not self.sim.file_available(export)
        ):
            return await error(404, "NoSuchKey", "The specified key does not exist.")

        size = await asyncio.to_thread(lambda: export.file.size)
        start, end = 0, size - 1
        status = 200
        response_headers = [
            (b"content-type", b"application/fhir+ndjson"),
            (b"accept-ranges", b"bytes"),
            (b"etag", f'"{export.task_id}"'.encode()),
        ]
        if range_header is not None:
            parsed = _RANGE_RE.match(range_header.strip())
            if parsed is None or (not parsed.group(1) and not parsed.group(2)):
                return await error(416, "InvalidRange", "The requested range is not satisfiable")
            if parsed.group(1):
                start = int(parsed.group(1))
                if parsed.group(2):
                    end = min(int(parsed.group(2)), size - 1)
            else:  # suffix: the last N bytes
                start = max(0, size - int(parsed.group(2)))
            if start >= size or start > end:
                record(416)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 416,
                        "headers": [
                            (b"content-range", f"bytes */{size}".encode()),
                            (b"content-length", b"0"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
            status = 206
            response_headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
        length = end - start + 1
        response_headers.append((b"content-length", str(length).encode()))
        record(status)
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await self._send_body(export, start, end, send)

    async def _send_body(self, export: Export, start: int, end: int, send: Send) -> None:
        behaviour = export.behaviour
        stop_at = behaviour.truncate_after_bytes  # absolute offset where the transfer dies
        if stop_at is not None and (stop_at <= start or not self.sim.take_truncation(export)):
            stop_at = None
        throttle = behaviour.throttle_bytes_per_second
        chunk_size = max(1, throttle // 20) if throttle else CHUNK
        position = start
        for chunk in _rechunk(export.file.iter_range(start, end), chunk_size):
            if stop_at is not None and position + len(chunk) >= stop_at:
                chunk = chunk[: stop_at - position]
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if behaviour.truncate_mode == "content_length":
                    # End the response early: the declared Content-Length is never reached.
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                raise TruncatedTransfer("transfer truncated on purpose")
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            position += len(chunk)
            if throttle:
                await asyncio.sleep(len(chunk) / throttle)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
