"""``serve``'s background work in a child process of its own.

The web process keeps the receiver's core and GIL to itself: applying events, launching
workflows, downloads and ingests run in this child, at a lower CPU priority. The parent
holds the executor lock and supervises: a child that dies is started again (DBOS recovers
its workflows), and the child dies with its parent (``PR_SET_PDEATHSIG``, and it also
exits when the pipe from its parent closes).

    python -m ehi_bridge.background.child     (started by ``serve``, never by hand)
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import structlog
from pydantic import SecretStr

from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from ehi_bridge.logging import configure_logging
from ehi_bridge.runtime import Runtime

log = structlog.get_logger(__name__)

NICENESS = 5
RESTART_DELAY_SECONDS = 1.0
PR_SET_PDEATHSIG = 1


class BackgroundChild:
    """The parent's handle: start, watch and restart the child; stop it on shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="background-child", daemon=True)
        self._watcher.start()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def _spawn(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ehi_bridge.background.child", str(os.getpid())],
            stdin=subprocess.PIPE,
            # glibc gives each thread that allocates its own heap (up to 8 per core); the
            # threads of a large onboarding left the child at 322 MB instead of 179 MB.
            env={**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")},
        )
        assert proc.stdin is not None
        # The settings travel through the pipe (not argv or the environment): they hold
        # secrets, and the parent's may not come from its environment at all (the demo).
        proc.stdin.write(settings_payload(self.settings) + b"\n")
        proc.stdin.flush()
        self._proc = proc

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("background process exited; starting it again", exit_code=code)
            if self._stopping.wait(RESTART_DELAY_SECONDS):
                return
            self._spawn()


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def settings_payload(settings: Settings) -> bytes:
    return orjson.dumps({name: _plain(getattr(settings, name)) for name in Settings.model_fields})


def settings_from_payload(line: bytes) -> Settings:
    return Settings(_env_file=None, **orjson.loads(line))  # type: ignore[call-arg]


def _die_with_parent(parent_pid: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(0)

    def watch_pipe() -> None:
        with contextlib.suppress(OSError):
            sys.stdin.buffer.read()  # returns at EOF: the parent is gone
        os._exit(0)

    threading.Thread(target=watch_pipe, name="parent-pipe", daemon=True).start()


def main() -> None:
    settings = settings_from_payload(sys.stdin.buffer.readline())
    _die_with_parent(int(sys.argv[1]))
    configure_logging(settings.log_level, settings.log_json)
    db = Database(settings.resolved_database_url)
    # The parent holds the executor lock for both processes.
    runtime = Runtime(settings, db, lock_held_by_caller=True, niceness=NICENESS)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    runtime.start()
    # As in the web process (server.Service.start): what start-up built lives as long as
    # the process, so the cyclic collector must not scan it again. Unfrozen, each full
    # collection here took ~50 ms of the applier's thread, which may be holding SQLite's
    # write gate meanwhile: every webhook commit waited that long (docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    try:
        stop.wait()
    finally:
        runtime.stop()
        db.dispose()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # DBOS's executor threads are not joined: everything is committed


if __name__ == "__main__":
    main()
