"""The WAL file of an SQLite database, synced by hand after commits that did not wait for it."""

from __future__ import annotations

import contextlib
import os


class WalFile:
    """The SQLite WAL file of one database, to ``fdatasync`` commits made with
    ``synchronous=NORMAL``. Reopened if the file was replaced (same path, new inode)."""

    def __init__(self, database_path: str) -> None:
        self.path = database_path + "-wal"
        self._fd: int | None = None

    def sync(self) -> None:
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            # The last connection closed: SQLite deletes the WAL only after checkpointing every
            # committed frame into the database file and syncing it. Nothing is left to sync.
            self.close()
            return
        if self._fd is not None and os.fstat(self._fd).st_ino != current:
            self.close()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
