"""The service process: lean webhook path + FastAPI app + background runtime, one ASGI app."""

from __future__ import annotations

import asyncio
import gc
import sys

import structlog

from ehi_bridge.app import create_api
from ehi_bridge.background.child import BackgroundChild
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from ehi_bridge.logging import configure_logging
from ehi_bridge.ops.observe import WebhookObserver
from ehi_bridge.runtime import Runtime
from ehi_bridge.webhooks.endpoints import PATH_PREFIX, Receive, Scope, Send, WebhookReceiver
from ehi_bridge.webhooks.inbox import InboxWriter

log = structlog.get_logger(__name__)

# The inbox writer thread needs the GIL back for a moment after each SQLite call and fsync,
# while the event loop thread holds it through bursts of requests. CPython makes a waiting
# thread wait up to this long before the holder must yield; the 5 ms default held each
# group commit up by milliseconds (bench/webhooks.py: ~6k -> ~9k deliveries/s on SQLite).
GIL_SWITCH_INTERVAL_SECONDS = 0.0005


class Service:
    """An ASGI app. With ``background=True`` it also runs the background work: in a child
    process (``EHI_BACKGROUND_PROCESS``, the default) or in this process."""

    def __init__(self, settings: Settings, *, background: bool = True) -> None:
        self.settings = settings
        self.db = Database(settings.resolved_database_url)
        in_process = background and not settings.background_process
        # `serve` holds the executor lock for this process.
        self.runtime = Runtime(settings, self.db, lock_held_by_caller=True) if in_process else None
        self.child = BackgroundChild(settings) if background and not in_process else None
        self.writer = InboxWriter(self.db, on_commit=self.runtime.wake if self.runtime else None)
        self.receiver = WebhookReceiver(
            settings, self.writer, observer=WebhookObserver(settings, self.db)
        )
        self.api = create_api(settings, self.db)
        if self.runtime is not None:
            self.api.state.ctx.extras["runtime_heartbeat"] = self.runtime.seconds_since_heartbeat
        if self.child is not None:
            self.api.state.ctx.extras["runtime_heartbeat"] = self._child_heartbeat

    def _child_heartbeat(self) -> float | None:
        child = self.child
        if child is None or not child.alive():
            return None
        return 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PATH_PREFIX):
            await self.receiver(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.api(scope, receive, send)

    def start(self) -> None:
        self.writer.start()
        if self.runtime is not None:
            self.runtime.start()
        if self.child is not None:
            self.child.start()
        # Everything built so far lives for the whole process: keep it out of the cyclic
        # collector's scans, which otherwise dominate p99 latency.
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        self.writer.stop()
        if self.runtime is not None:
            self.runtime.stop()
        self.db.dispose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.to_thread(self.start)
                except Exception as exc:
                    log.error("start-up failed", error_type=type(exc).__name__)
                    await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return


def web_only_app() -> Service:
    """Factory for ``serve --workers N --no-background``: one web process of several."""

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return Service(settings, background=False)
