"""One process per executor id.

DBOS recovers the unfinished workflows of an executor id when a process with that id
launches. Two live processes with the same id would each recover (and run) the other's
work, so the background runtime holds this lock for as long as it runs: an advisory lock
on PostgreSQL (released by the server when the process dies), an ``flock`` beside the
SQLite file (released by the kernel when the process dies).
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ehi_bridge.db.engine import is_sqlite, normalize_url


class ExecutorIdInUse(RuntimeError):
    """Another running process has this executor id."""


def _message(executor_id: str) -> str:
    return (
        f"another ehi-bridge process is running background work as executor id "
        f"{executor_id!r}; give every process its own EHI_EXECUTOR_ID"
    )


class ExecutorLock:
    def __init__(self, database_url: str, executor_id: str) -> None:
        self.url = normalize_url(database_url)
        self.executor_id = executor_id
        self._file: int | None = None
        self._engine: Any = None
        self._connection: Any = None

    def acquire(self, wait_seconds: float = 10.0) -> None:
        """Take the lock, waiting a little for a process that is just exiting."""
        deadline = time.monotonic() + wait_seconds
        while not self._try():
            if time.monotonic() >= deadline:
                raise ExecutorIdInUse(_message(self.executor_id))
            time.sleep(0.2)

    def release(self) -> None:
        if self._file is not None:
            os.close(self._file)  # closing the descriptor drops the flock
            self._file = None
        if self._connection is not None:
            self._connection.close()
            self._engine.dispose()
            self._connection = self._engine = None

    def _try(self) -> bool:
        if is_sqlite(self.url):
            return self._try_file()
        return self._try_advisory()

    def _try_file(self) -> bool:
        database = make_url(self.url).database or "ehi"
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.executor_id)
        path = Path(f"{database}.executor-{safe}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._file = fd
        return True

    def _try_advisory(self) -> bool:
        if self._engine is None:
            self._engine = create_engine(self.url, pool_size=1, max_overflow=0)
            self._connection = self._engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            )
        got = self._connection.execute(
            text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))"),
            {"key": f"ehi-bridge executor {self.executor_id}"},
        ).scalar()
        return bool(got)
