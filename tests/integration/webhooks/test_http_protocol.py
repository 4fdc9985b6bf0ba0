"""uvicorn's protocol as the service runs it: a webhook answer leaves in one write, other
paths keep uvicorn's own behaviour, 100 Continue is not held back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from ehi_bridge.webhooks.http_protocol import WebhookHttpProtocol

BODY = b'{"received":true}'


class RecordingTransport(asyncio.Transport):
    """Stands in for the socket: records each write the protocol makes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"].endswith("/broken"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("the app fails after starting its answer")
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


async def exchange(*chunks: bytes, pause_after_first: bool = False) -> RecordingTransport:
    config = Config(app=answer, http=WebhookHttpProtocol, lifespan="off", log_config=None)
    protocol = WebhookHttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    for index, chunk in enumerate(chunks):
        protocol.data_received(chunk)
        for _ in range(20):
            await asyncio.sleep(0)
        if pause_after_first and index == 0:
            # The client sends its body only after the interim answer.
            assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    protocol.connection_lost(None)
    return transport


def post(path: str, body: bytes = b'{"id":"evt"}', extra: bytes = b"") -> bytes:
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )


def test_a_webhook_answer_is_one_write_with_head_and_body() -> None:
    transport = asyncio.run(exchange(post("/webhooks/fasten/test")))
    assert len(transport.writes) == 1
    (answer_bytes,) = transport.writes
    assert answer_bytes.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer_bytes.endswith(b"\r\n\r\n" + BODY)


def test_two_webhooks_on_one_connection_are_answered_in_order() -> None:
    transport = asyncio.run(exchange(post("/webhooks/fasten/test"), post("/webhooks/fasten/live")))
    assert len(transport.writes) == 2
    assert all(w.startswith(b"HTTP/1.1 200 OK") and w.endswith(BODY) for w in transport.writes)


def test_other_paths_keep_uvicorns_head_then_body() -> None:
    transport = asyncio.run(exchange(post("/api/v1/events")))
    assert len(transport.writes) == 2
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK") and transport.writes[1] == BODY


def test_100_continue_goes_out_before_the_body_arrives() -> None:
    body = b'{"id":"evt"}'
    head, _, _ = post("/webhooks/fasten/test", body, b"expect: 100-continue\r\n").partition(body)
    transport = asyncio.run(exchange(head, body, pause_after_first=True))
    assert transport.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert transport.writes[1].startswith(b"HTTP/1.1 200 OK") and transport.writes[1].endswith(BODY)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_held_head_is_written_before_the_connection_closes() -> None:
    transport = asyncio.run(exchange(post("/webhooks/fasten/broken")))
    assert transport.closed
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK")
