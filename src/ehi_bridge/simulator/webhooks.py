"""Webhook envelopes, Standard Webhooks signing, and the background sender.

Each attempt is built afresh: the body's ``date`` and the ``webhook-timestamp`` header are the
attempt's (real) time, the ``id`` stays the event's. Timestamps use real time, not the
simulated clock, so that receivers' ±5 minute tolerance holds after the clock is advanced.
The sender is one asyncio task in the servers' loop; it also completes due exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from ehi_bridge.simulator.clock import iso
from ehi_bridge.simulator.state import Attempt, Delivery, Simulator
from ehi_bridge.webhooks.signature import decode_secret, sign

log = logging.getLogger("ehi_bridge.simulator.webhooks")


def envelope(delivery: Delivery, date: str) -> dict[str, Any]:
    return {
        "api_mode": delivery.api_mode,
        "date": date,
        "id": delivery.event_id,
        "type": delivery.type,
        "data": delivery.data,
    }


def signed_attempt(
    delivery: Delivery, secret: str, now: float | None = None
) -> tuple[bytes, dict[str, str], str, int]:
    """Body, headers, ``date`` and timestamp of one attempt, signed with ``secret``."""
    current = time.time() if now is None else now
    timestamp = int(current)
    date = iso(current)
    body = orjson.dumps(envelope(delivery, date))
    headers = {
        "content-type": "application/json",
        "user-agent": "ehi-bridge-fasten-simulator",
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(decode_secret(secret), delivery.event_id, timestamp, body),
    }
    return body, headers, date, timestamp


class WebhookSender:
    """Delivers due webhooks (at least once, with retries) and completes due exports."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._event: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._completing: asyncio.Task[object] | None = None
        self._slots = asyncio.Semaphore(1)  # replaced in run(), sized from the config

    def _wakeup_for(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        def wakeup() -> None:
            event = self._event
            if event is None or loop.is_closed():
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

        return wakeup

    async def run(self) -> None:
        self._event = asyncio.Event()
        self.sim.set_wakeup(self._wakeup_for(asyncio.get_running_loop()))
        concurrency = self.sim.config.webhook_concurrency
        self._slots = asyncio.Semaphore(concurrency)
        timeout = httpx.Timeout(self.sim.config.webhook_timeout_seconds)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            timeout=timeout, limits=limits, follow_redirects=False
        ) as client:
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._event.wait(), self.sim.config.tick_seconds)
                    self._event.clear()
                    await self.tick(client)
            finally:
                if self._completing is not None:
                    self._completing.cancel()
                for task in list(self._tasks):
                    task.cancel()
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                self.sim.set_wakeup(lambda: None)

    async def tick(self, client: httpx.AsyncClient) -> None:
        if (self._completing is None or self._completing.done()) and self.sim.has_due_exports():
            # Measuring a large (scaled) file takes a while: off the loop, one at a time.
            self._completing = asyncio.create_task(self._complete_exports())
        due = self.sim.due_deliveries()
        groups: dict[int, list[Delivery]] = {}
        for delivery in due:
            if delivery.release_group is not None and not delivery.attempts:
                groups.setdefault(delivery.release_group, []).append(delivery)
            else:
                self._spawn(self._send_all(client, [delivery]))
        for batch in groups.values():
            self._spawn(self._send_all(client, batch))  # in the released order, one by one

    async def _complete_exports(self) -> object:
        try:
            done = await asyncio.to_thread(self.sim.complete_due_exports)
        except Exception:
            log.exception("simulator could not complete exports")
            return None
        self._wake()
        return done

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_all(self, client: httpx.AsyncClient, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            await self._send(client, delivery)

    async def _send(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        async with self._slots:
            await self._attempt(client, delivery)

    async def _attempt(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        mode_config = self.sim.config.modes[delivery.api_mode]
        secret = mode_config.signing_secret
        number = len(delivery.attempts) + 1
        if secret is None or delivery.url is None:
            attempt = Attempt(
                number,
                iso(time.time()),
                int(time.time()),
                None,
                "no webhook URL or secret for this mode",
                b"",
                {},
            )
            self.sim.attempt_finished(delivery, attempt, final=True)
            return
        body, headers, date, timestamp = signed_attempt(delivery, secret)
        status: int | None = None
        error: str | None = None
        try:
            response = await client.post(delivery.url, content=body, headers=headers)
            status = response.status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        log.info(
            "simulator webhook attempt: event_id=%s type=%s attempt=%d status=%s error=%s",
            delivery.event_id,
            delivery.type,
            number,
            status,
            error,
        )
        self.sim.attempt_finished(
            delivery, Attempt(number, date, timestamp, status, error, body, headers)
        )
        self._wake()

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
