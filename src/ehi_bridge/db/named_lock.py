"""A lock by name across threads and processes that holds nothing in the database while it
is held: work that waits on the network (a token request) runs under it without SQLite's
write lock (which would stop every writer, the webhook receiver's too) or an open
transaction. SQLite: an ``flock`` on a file beside the database (one descriptor per holder,
so threads of one process exclude each other too). PostgreSQL: a session advisory lock on a
connection of its own, released by the server if the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator

from sqlalchemy import text

from ehi_bridge.db.engine import Database

_in_memory: dict[str, threading.Lock] = {}
_in_memory_guard = threading.Lock()


@contextlib.contextmanager
def named_lock(db: Database, name: str) -> Iterator[None]:
    if db.is_sqlite and db.sqlite_path is None:  # an in-memory database lives in one process
        with _in_memory_guard:
            lock = _in_memory.setdefault(name, threading.Lock())
        with lock:
            yield
        return
    if db.sqlite_path is not None:
        digest = hashlib.sha256(name.encode()).hexdigest()[:24]
        fd = os.open(f"{db.sqlite_path}-lock-{digest}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the flock
        return
    key = {"key": name}
    with db.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(hashtextextended(:key, 0))"), key)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"), key)
