"""Starting the ingest's parser process (:mod:`ehi_bridge.records.parse_worker`).

Kept apart from :mod:`ehi_bridge.records.ingest` (and free of SQLAlchemy) so that
``ehi-bridge import`` can start its parser on the file before it imports the database
layer: the parser reads and parses ahead (within its bounded output buffer) while the
command's own start-up runs on the other core.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final

import ehi_bridge
from ehi_bridge.records.parse_worker import write_frame

BATCH_ROWS: Final = 5000  # rows per transaction
BATCH_BYTES: Final = 8 * 1024 * 1024  # or resource bytes per transaction
CHUNK_ROWS: Final = 500  # rows per hand-over from the parser process
CHUNK_BYTES: Final = 512 * 1024  # or resource bytes per hand-over
QUARANTINE_BYTES: Final = 1024 * 1024  # default cut of a rejected line kept in quarantine

Arguments = tuple[str, int, int, int, int, int]


def parser_arguments(path: Path, batch_rows: int, quarantine_bytes: int) -> Arguments:
    """What a parser process is told about its file (one frame on its stdin)."""
    return (str(path), batch_rows, BATCH_BYTES, CHUNK_ROWS, CHUNK_BYTES, quarantine_bytes)


def _package_root() -> str:
    return str(Path(ehi_bridge.__file__).resolve().parents[1])


def start_parser() -> subprocess.Popen[bytes]:
    """A parser interpreter that boots and then waits for its arguments on stdin."""
    env = dict(os.environ)
    root = _package_root()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "ehi_bridge.records.parse_worker", "--wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        close_fds=True,
        # Its own session: a terminal's Ctrl-C (sent to the whole foreground group) stops
        # only the parent, which ends this process; a parser still importing would otherwise
        # print a KeyboardInterrupt traceback.
        start_new_session=True,
    )


def discard(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class ReadyParser:
    """At most one parser booted ahead of need, once :func:`keep_parser_ready` was called
    (by the service, whose ingests then skip the ~40 ms an interpreter takes to start),
    or one already parsing a file (:func:`start_parsing`, by ``ehi-bridge import``).
    A waiting parser exits when this process does (its stdin reaches end of input)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: subprocess.Popen[bytes] | None = None
        self._keep = False
        self._started: tuple[subprocess.Popen[bytes], Arguments] | None = None

    def keep(self) -> None:
        with self._lock:
            self._keep = True
            if self._ready is None or self._ready.poll() is not None:
                self._ready = start_parser()

    def start(self, arguments: Arguments) -> None:
        """A parser told its file now; :meth:`take_started` hands it to the ingest."""
        proc = start_parser()
        assert proc.stdin is not None
        try:
            write_frame(proc.stdin, arguments)
            proc.stdin.close()
        except OSError:
            discard(proc)  # the ingest starts its own parser
            return
        with self._lock:
            previous, self._started = self._started, (proc, arguments)
        if previous is not None:
            discard(previous[0])

    def take_started(self, arguments: Arguments) -> subprocess.Popen[bytes] | None:
        """The parser started on exactly these arguments, if any (else None)."""
        with self._lock:
            started, self._started = self._started, None
        if started is None:
            return None
        if started[1] != arguments:
            discard(started[0])
            return None
        return started[0]

    def take(self) -> subprocess.Popen[bytes]:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None or ready.poll() is not None:
            if ready is not None:
                ready.wait()
            ready = start_parser()
        return ready

    def replenish(self) -> None:
        """After an ingest (not during it: booting takes CPU from the ingest)."""
        with self._lock:
            if self._keep and self._ready is None:
                self._ready = start_parser()

    def stop(self) -> None:
        with self._lock:
            ready, self._ready, self._keep = self._ready, None, False
            started, self._started = self._started, None
        for proc in (ready, started[0] if started is not None else None):
            if proc is not None:
                discard(proc)


ready_parser = ReadyParser()


def keep_parser_ready() -> None:
    """Keep one parser process booted and waiting for the next ingest (the service)."""
    ready_parser.keep()


def stop_ready_parser() -> None:
    ready_parser.stop()


def start_parsing(path: Path, *, quarantine_bytes: int, batch_rows: int = BATCH_ROWS) -> None:
    """Start a parser on ``path`` now, for the next :func:`ingest_file` of that file with
    the same settings (``ehi-bridge import``: it parses while the command starts up)."""
    ready_parser.start(parser_arguments(path, batch_rows, quarantine_bytes))
