"""The real server process: request heads bounded in size (431) and time, SIGTERM exits 0."""

from __future__ import annotations

import signal
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.slow


def _connect(base: str) -> socket.socket:
    parts = urlsplit(base)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_heads_are_bounded_and_sigterm_exits_0(
    service_env: dict[str, str], start_service: ServerFactory
) -> None:
    env = {**service_env, "EHI_HEADER_TIMEOUT_SECONDS": "1", "EHI_MAX_HEADER_BYTES": "16384"}
    with start_service(env) as (proc, base):
        # 2 MB of headers: 431, and the connection is closed.
        with _connect(base) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            try:
                for i in range(2000):
                    sock.sendall(b"x-filler-%d: %s\r\n" % (i, b"a" * 1000))
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 431 ")

        # A half-sent head: the server closes the connection after the timeout.
        with _connect(base) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            assert _read_all(sock) == b""
            assert time.monotonic() - started < 25

        # Normal requests still work, on a kept-alive connection too.
        with _connect(base) as sock:
            for _ in range(2):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b"}"):
                    answer += sock.recv(65536)
                assert answer.startswith(b"HTTP/1.1 200 ")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
