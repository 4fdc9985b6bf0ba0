"""uvicorn's httptools protocol, answering a webhook in one socket write instead of two,
and bounding every request head in size and time.

Heads: a request line and headers over ``max_head_bytes`` are answered 431 and the
connection closed, before the app sees anything; a connection that has not sent a complete
head ``head_timeout`` seconds after it opened (or after its next request began) is closed,
so half-sent requests cannot hold connections open (uvicorn has no such limit of its own).
``protocol_for`` makes the class with the limits from Settings.

uvicorn writes a response's status line and headers as soon as the app starts the
response, and the body in a second ``send()``. On the webhook path every answer is a
small JSON body sent right after its headers, and at thousands of answers a second the
second system call is a measurable share of the event loop's time. Here the cycle of a
webhook request writes through a transport that holds the head back until the body.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ehi_bridge.config import Settings
from ehi_bridge.webhooks.endpoints import PATH_PREFIX

_WEBHOOK_TARGET = PATH_PREFIX.encode("ascii")
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
    b"content-length: 31\r\nconnection: close\r\n\r\nrequest header fields too large"
)
DEFAULT_MAX_HEAD_BYTES = 32 * 1024
DEFAULT_HEAD_TIMEOUT_SECONDS = 10.0


_INTERIM = b"HTTP/1.1 1"  # 100 Continue must go out at once: the client waits for it


class _HeadWithBody:
    """A transport whose first write of the response (its head) waits for the next one."""

    __slots__ = ("_head", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._held = False

    def write(self, data: bytes) -> None:
        if not self._held and not data.startswith(_INTERIM):
            self._held = True
            self._head = data
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            self._transport.write(self._head)
            self._head = None
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class WebhookHttpProtocol(HttpToolsProtocol):
    max_head_bytes = DEFAULT_MAX_HEAD_BYTES
    head_timeout = DEFAULT_HEAD_TIMEOUT_SECONDS
    # Per request: the head is counted per received chunk and timed by one timestamp; a
    # single timer per connection checks it (no timer is created per request).
    _in_head = True
    _head_bytes = 0
    _head_started = 0.0
    _head_timer: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_started = self.loop.time()
        self._head_timer = self.loop.call_later(self.head_timeout / 2, self._check_head_time)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _check_head_time(self) -> None:
        if self._in_head and self.loop.time() - self._head_started > self.head_timeout:
            self._head_timer = None
            self._refused = True
            self.transport.close()
            return
        self._head_timer = self.loop.call_later(self.head_timeout / 2, self._check_head_time)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Still in the head after all these bytes: every one of them was head.
        if self._in_head and self._head_bytes > self.max_head_bytes and not self._refused:
            self._refused = True
            self.transport.write(_431)
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._head_started = self.loop.time()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if not self.url.startswith(_WEBHOOK_TARGET):
            super().on_headers_complete()
            return
        # The request's cycle takes the transport it is built with; the connection keeps
        # the real one (flow control, the next request).
        transport = self.transport
        self.transport = cast(asyncio.Transport, _HeadWithBody(transport))
        try:
            super().on_headers_complete()
        finally:
            self.transport = transport


def protocol_for(max_head_bytes: int, head_timeout: float) -> type[WebhookHttpProtocol]:
    """The protocol class with these limits (uvicorn builds one instance per connection)."""
    return type(
        "LimitedHttpProtocol",
        (WebhookHttpProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout},
    )


@functools.cache
def _limits_from_settings() -> tuple[int, float]:
    settings = Settings()
    return settings.max_header_bytes, settings.header_timeout_seconds


class SettingsHttpProtocol(WebhookHttpProtocol):
    """For ``serve --workers N``: each worker is a fresh interpreter that receives uvicorn's
    config pickled, so its protocol must be a class found by name; it takes the limits from
    the worker's own settings (the same environment as the parent's)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.max_head_bytes, self.head_timeout = _limits_from_settings()
        super().connection_made(transport)
