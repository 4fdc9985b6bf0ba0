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


FIRST: Final = 0  # the key's first occurrence in the run
EXACT: Final = 1  # same content as the key's previous occurrence: nothing new
CONFLICT: Final = 2  # different content from the previous occurrence: a new version


class SeenKeys:
    """Exact set of keys seen in one ingest run, with the content hash and line of each
    key's latest version, in bounded memory.

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
            "hash BLOB NOT NULL, line INTEGER NOT NULL, PRIMARY KEY (t, i)) WITHOUT ROWID"
        )
        self._db.execute("BEGIN")
        self._batch = 0

    def classify(self, items: Sequence[tuple[Key, bytes, int]]) -> list[tuple[int, int]]:
        """For each (key, content hash, line) in file order: (kind, line of the key's
        previous version), kind :data:`FIRST` (line 0), :data:`EXACT` or :data:`CONFLICT`."""
        self._batch += 1
        batch = self._batch
        before = self._db.total_changes
        self._db.executemany(
            "INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?, ?)",
            [(k[0], k[1], batch, h, line) for k, h, line in items],
        )
        added = self._db.total_changes - before
        distinct = {key for key, _, _ in items}
        state: dict[Key, tuple[bytes, int]] = {}
        if added != len(distinct):  # some keys occurred in an earlier batch: their state
            wanted = list(distinct)
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                chunk = wanted[start : start + LOOKUP_CHUNK]
                marks = ", ".join("(?, ?)" for _ in chunk)
                params = [value for key in chunk for value in key]
                for t, i, h, line in self._db.execute(
                    "SELECT t, i, hash, line FROM seen "
                    f"WHERE batch < ? AND (t, i) IN (VALUES {marks})",
                    [batch, *params],
                ):
                    state[(t, i)] = (bytes(h), int(line))
        out: list[tuple[int, int]] = []
        changed: dict[Key, tuple[bytes, int]] = {}
        for key, content_hash, line in items:
            previous = state.get(key)
            if previous is None:
                out.append((FIRST, 0))
                state[key] = (content_hash, line)
            elif previous[0] == content_hash:
                out.append((EXACT, previous[1]))
            else:
                out.append((CONFLICT, previous[1]))
                state[key] = changed[key] = (content_hash, line)
        if changed:
            self._db.executemany(
                "UPDATE seen SET hash = ?, line = ? WHERE t = ? AND i = ?",
                [(h, line, k[0], k[1]) for k, (h, line) in changed.items()],
            )
        return out

    def close(self) -> None:
        self._db.close()
