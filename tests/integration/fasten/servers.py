"""Fakes of the REMOTE systems (Fasten's API, its object storage, alert/downstream
receivers) as real HTTP servers on loopback: uvicorn in a thread, raw ASGI apps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from tests.support import free_port

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class DeliberateBreak(Exception):
    """Raised by a fake mid-response to cut the connection (uvicorn closes it)."""


class _QuietBreaks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DeliberateBreak)


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1:<free port> (h11, so HTTP/1.1 framing is strict);
    yield its base URL."""
    quiet = _QuietBreaks()
    logging.getLogger("uvicorn.error").addFilter(quiet)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="h11",
        log_config=None,
        lifespan="off",
        log_level="critical",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        logging.getLogger("uvicorn.error").removeFilter(quiet)


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def headers_of(scope: Any) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def respond(
    send: Any, status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> None:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every request; answers the next status (or (status, headers)) of ``script``,
    then 200."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    script: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        with self.lock:
            self.received.append(Received(scope["method"], scope["path"], headers_of(scope), body))
            answer = self.script.pop(0) if self.script else 200
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        await respond(send, status, b"ok", headers)


@contextmanager
def receiver(script: list[int | tuple[int, dict[str, str]]] | None = None) -> Iterator[Receiver]:
    rec = Receiver(script=list(script or []))
    with serve(rec) as base:
        rec.url = f"{base}/hook"
        yield rec
