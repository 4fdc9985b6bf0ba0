"""The exact set of keys seen in one ingest run, in bounded memory.

Only the standard library: the ingest's parser process imports it (with
:mod:`ehi_bridge.records.ndjson`) and nothing of the database layer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

Key = tuple[str, str]  # (resource_type, resource_id)
LOOKUP_CHUNK: Final = 400  # keys per SELECT … IN (…): well under any bind-parameter limit


class SeenKeys:
    """Exact set of keys seen in one ingest run, in bounded memory.

    A private temporary SQLite database (``sqlite3.connect("")``): pages beyond its cache
    spill to an anonymous temporary file, so a file with millions of ids costs a few MiB of
    RAM. Not the application database; nothing in it outlives the run.
    """

    def __init__(self, cache_kib: int = 8192) -> None:
        self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        self._db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE seen (t TEXT NOT NULL, i TEXT NOT NULL, batch INTEGER NOT NULL, "
            "PRIMARY KEY (t, i)) WITHOUT ROWID"
        )
        self._db.execute("BEGIN")
        self._batch = 0

    def add_batch(self, keys: Sequence[Key]) -> list[bool]:
        """For each key (in order): True when it is the first occurrence in this run."""
        self._batch += 1
        before = self._db.total_changes
        batch = self._batch
        self._db.executemany(
            "INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", [(t, i, batch) for t, i in keys]
        )
        added = self._db.total_changes - before
        distinct = set(keys)
        earlier: set[Key] = set()
        if added != len(distinct):  # some keys occurred in an earlier batch: which ones
            wanted = list(distinct)
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                chunk = wanted[start : start + LOOKUP_CHUNK]
                marks = ", ".join("(?, ?)" for _ in chunk)
                params = [value for key in chunk for value in key]
                earlier.update(
                    (t, i)
                    for t, i in self._db.execute(
                        f"SELECT t, i FROM seen WHERE batch < ? AND (t, i) IN (VALUES {marks})",
                        [batch, *params],
                    )
                )
        firsts: list[bool] = []
        taken: set[Key] = set()
        for key in keys:
            firsts.append(key not in earlier and key not in taken)
            taken.add(key)
        return firsts

    def close(self) -> None:
        self._db.close()
