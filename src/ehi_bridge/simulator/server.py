"""Runs the simulator: the API server, the storage server and the webhook sender in one
asyncio loop on a background thread.

    with SimulatorServer(SimulatorConfig.for_tests(webhook_url_test=url)) as server:
        conn = server.sim.connect(external_id="user-1")
        server.api_url, server.storage_url, server.service_env()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit

import uvicorn

from ehi_bridge.simulator.api import create_app
from ehi_bridge.simulator.config import SimulatorConfig
from ehi_bridge.simulator.state import Simulator
from ehi_bridge.simulator.storage import StorageApp, TruncatedTransfer
from ehi_bridge.simulator.webhooks import WebhookSender


class _DropDeliberateTruncation(logging.Filter):
    """The storage server breaks transfers on purpose; that is not an error worth a trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TruncatedTransfer):
            return False
        return not (isinstance(exc, RuntimeError) and "Content-Length" in str(exc))


_FILTER = _DropDeliberateTruncation()


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
    # without it an answer written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class SimulatorServer:
    def __init__(self, config: SimulatorConfig, sim: Simulator | None = None) -> None:
        self.config = config
        self.sim = sim or Simulator(config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._sockets: list[socket.socket] = []
        self.api_url = ""
        self.storage_url = ""

    @property
    def fasten_api_url(self) -> str:
        """What the service's ``EHI_FASTEN_API_URL`` should be."""
        return f"{self.api_url}/v1"

    @property
    def stitch_js_url(self) -> str:
        return f"{self.api_url}/stitch.js"

    def service_env(self) -> dict[str, str]:
        """``EHI_*`` settings that point ehi-bridge at this simulator."""

        env = {
            "EHI_FASTEN_API_URL": self.fasten_api_url,
            "EHI_DOWNLOAD_ALLOWED_HOSTS": urlsplit(self.storage_url).netloc,
            "EHI_STITCH_JS_URL": self.stitch_js_url,
        }
        for mode, cfg in self.config.modes.items():
            prefix = f"EHI_{mode.upper()}_"
            env[prefix + "PUBLIC_ID"] = cfg.public_id
            env[prefix + "PRIVATE_KEY"] = cfg.private_key
            env[prefix + "WEBHOOK_SECRETS"] = ",".join(cfg.webhook_secrets)
        return env

    def start(self, timeout: float = 15.0) -> SimulatorServer:
        cfg = self.config
        api_sock = bind_listener(cfg.host, cfg.port)
        storage_sock = bind_listener(cfg.storage_host, cfg.storage_port)
        self._sockets = [api_sock, storage_sock]
        api_port = api_sock.getsockname()[1]
        storage_port = storage_sock.getsockname()[1]
        self.api_url = cfg.api_url_override or f"http://{cfg.api_public_host}:{api_port}"
        self.storage_url = (
            cfg.storage_url_override or f"http://{cfg.storage_public_host}:{storage_port}"
        )
        self.sim.api_base_url = self.api_url
        self.sim.storage_base_url = self.storage_url
        logging.getLogger("uvicorn.error").addFilter(_FILTER)
        self._thread = threading.Thread(target=self._run, name="fasten-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the simulator did not start")
        if self._error is not None:
            raise RuntimeError("the simulator failed to start") from self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        def server(app: object) -> uvicorn.Server:
            config = uvicorn.Config(
                app,  # type: ignore[arg-type]
                lifespan="off",
                log_config=None,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=2,
            )
            return uvicorn.Server(config)

        api = server(create_app(self.sim))
        storage = server(StorageApp(self.sim))
        sender = WebhookSender(self.sim)
        tasks = [
            asyncio.create_task(api.serve(sockets=[self._sockets[0]])),
            asyncio.create_task(storage.serve(sockets=[self._sockets[1]])),
        ]
        sender_task = asyncio.create_task(sender.run())
        while not (api.started and storage.started):
            if any(t.done() for t in tasks):
                for t in tasks:
                    if t.done() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                raise RuntimeError("a simulator server stopped during start-up")
            await asyncio.sleep(0.01)
        self._ready.set()
        await self._stop.wait()
        api.should_exit = True
        storage.should_exit = True
        sender_task.cancel()
        await asyncio.gather(*tasks, sender_task, return_exceptions=True)

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
