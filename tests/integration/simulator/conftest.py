"""Fixtures: the simulator on loopback, and a webhook receiver (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from ehi_bridge.simulator import SimulatorConfig, SimulatorServer
from ehi_bridge.simulator.smart.config import SmartConfig
from ehi_bridge.simulator.smart.server import SmartSandbox
from tests.support import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every POST; answers the next status in ``script`` (then 200)."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    delay_seconds: float = 0.0
    spans: list[tuple[str, float, float]] = field(default_factory=list)  # webhook-id, start, end
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.received.append(Received(headers, body))
            status = self.script.pop(0) if self.script else 200
        started = time.monotonic()
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        with self.lock:
            self.spans.append((headers.get("webhook-id", ""), started, time.monotonic()))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.script.clear()
            self.delay_seconds = 0.0
            self.spans.clear()

    def most_in_flight(self, webhook_ids: set[str]) -> int:
        """The most of these deliveries the receiver was answering at one time."""
        with self.lock:
            edges = sorted(
                edge
                for webhook_id, start, end in self.spans
                if webhook_id in webhook_ids
                for edge in ((start, 1), (end, -1))
            )
        most = current = 0
        for _, step in edges:
            current += step
            most = max(most, current)
        return most

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [r.body for r in self.received]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture(scope="module")
def shared_receiver() -> Iterator[Receiver]:
    rec = Receiver()
    port = free_port()
    config = uvicorn.Config(
        rec, host="127.0.0.1", port=port, log_config=None, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    rec.url = f"http://127.0.0.1:{port}/webhooks/fasten"
    yield rec
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def receiver(shared_receiver: Receiver) -> Receiver:
    shared_receiver.reset()
    return shared_receiver


@pytest.fixture
def make_simulator(receiver: Receiver) -> Iterator[Callable[..., SimulatorServer]]:
    servers: list[SimulatorServer] = []

    def make(**overrides: Any) -> SimulatorServer:
        config = SimulatorConfig.for_tests(
            webhook_url_test=receiver.url, webhook_url_live=receiver.url, **overrides
        )
        server = SimulatorServer(config).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared_simulator(shared_receiver: Receiver) -> Iterator[SimulatorServer]:
    config = SimulatorConfig.for_tests(
        webhook_url_test=shared_receiver.url, webhook_url_live=shared_receiver.url
    )
    with SimulatorServer(config) as server:
        yield server


@pytest.fixture
def simulator(shared_simulator: SimulatorServer, receiver: Receiver) -> Iterator[SimulatorServer]:
    """The module's simulator, reset for each test."""
    sim = shared_simulator.sim
    yield shared_simulator
    # Let in-flight deliveries land before forgetting them, so none leaks into the next test.
    wait_until(lambda: not [d for d in sim.list_deliveries() if d.state == "sending"])
    sim.reset()


TEST_AUTH = ("public_test_sim", "private_test_sim")
LIVE_AUTH = ("public_live_sim", "private_live_sim")


@pytest.fixture(scope="module")
def shared_smart() -> Iterator[SmartSandbox]:
    """The SMART EHR sandbox on a free loopback port."""
    with SmartSandbox(SmartConfig(port=free_port())) as sandbox:
        yield sandbox


@pytest.fixture
def smart(shared_smart: SmartSandbox) -> Iterator[SmartSandbox]:
    """The module's SMART sandbox; faults, settings and stats reset after each test."""
    yield shared_smart
    state = shared_smart.state
    state.clear_faults()
    state.access_token_ttl_seconds = shared_smart.config.access_token_ttl_seconds
    state.fixed_patient_id = None
    state.reset_stats()
