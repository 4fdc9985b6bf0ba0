"""A queue for SQLite's hot writers, across threads and processes.

SQLite has one write lock per database. A writer that finds it taken waits in SQLite's busy
handler, which polls with sleeps growing to 100 ms, so it may start long after the lock was
freed: the webhook receiver's group commit did, behind the background applier in another
process. Writers that take this gate first (an ``flock`` on a file beside the database)
queue in the kernel instead and are woken the moment the holder is done. Only the writers
on the hot path take it (the inbox writer and the applier); the rest keep the busy handler.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator


class WriteGate:
    def __init__(self, database_path: str) -> None:
        self.path = f"{database_path}-writegate"
        self._local = threading.local()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        # One descriptor per thread: flock is per open file, and a shared one would let two
        # threads of this process in at once.
        fd: int | None = getattr(self._local, "fd", None)
        if fd is None:
            fd = self._local.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
