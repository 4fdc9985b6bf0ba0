"""Syncing an SQLite WAL by hand (``db/wal.py``), including after SQLite removed it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ehi_bridge.db.wal import WalFile


def test_a_wal_removed_by_the_last_close_needs_no_sync(tmp_path: Path) -> None:
    database = tmp_path / "w.sqlite3"
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE t (v TEXT)")
    connection.execute("INSERT INTO t VALUES ('committed')")
    wal = WalFile(str(database))
    wal.sync()  # the WAL exists: its descriptor is opened and synced
    connection.close()  # the last connection: checkpointed into the database, WAL deleted
    assert not Path(wal.path).exists()
    wal.sync()  # a commit answered after that close is already on disk
    reopened = sqlite3.connect(database)
    try:
        assert reopened.execute("SELECT v FROM t").fetchall() == [("committed",)]
    finally:
        reopened.close()
    wal.close()
