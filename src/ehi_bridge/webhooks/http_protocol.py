"""uvicorn's httptools protocol, answering a webhook in one socket write instead of two.

uvicorn writes a response's status line and headers as soon as the app starts the
response, and the body in a second ``send()``. On the webhook path every answer is a
small JSON body sent right after its headers, and at thousands of answers a second the
second system call is a measurable share of the event loop's time. Here the cycle of a
webhook request writes through a transport that holds the head back until the body.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ehi_bridge.webhooks.endpoints import PATH_PREFIX

_WEBHOOK_TARGET = PATH_PREFIX.encode("ascii")
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
    def on_headers_complete(self) -> None:
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
