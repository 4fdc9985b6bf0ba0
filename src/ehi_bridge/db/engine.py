"""Engines and sessions. The database URL alone selects SQLite (WAL, fsync'd) or PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ehi_bridge.db.urls import is_sqlite, normalize_url
from ehi_bridge.db.wal import WalFile
from ehi_bridge.db.write_gate import WriteGate

__all__ = [
    "WRITE_GATE_RELEASED_AT",
    "WRITE_GATE_SECONDS",
    "Database",
    "is_sqlite",
    "make_engine",
    "normalize_url",
    "sqlite_wal_database",
]

WRITE_GATE_SECONDS = "write_gate_seconds"
WRITE_GATE_RELEASED_AT = "write_gate_released_at"  # time.perf_counter() at its release
# A hot writer's WAL frames are checkpointed (outside the gate) every this many commits.
HOT_CHECKPOINT_EVERY = 16


def sqlite_wal_database(dbapi_connection: Any) -> str | None:
    """The file of an SQLite connection's main database when it is in WAL mode, as SQLite
    itself opened it (relative paths and URI filenames resolved); None in memory or in
    another journal mode. Its WAL is that path plus ``-wal``."""
    cursor = dbapi_connection.cursor()
    try:
        files = {row[1]: row[2] for row in cursor.execute("PRAGMA database_list")}
        mode = str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    finally:
        cursor.close()
    main = files.get("main")
    return str(main) if main and mode == "wal" else None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # New databases only (a no-op once tables exist). 4 KiB pages: every commit writes each
    # page it touched to the WAL, and an inbox commit touches one random page per delivery
    # in the event-id index; 16 KiB pages cost webhook throughput 40 % and gained ingest
    # only ~6 % (docs/benchmarks.md).
    cursor.execute("PRAGMA page_size=4096")
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is fsync'd before it returns, so a 2xx never outruns the disk.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_commit_without_sync(dbapi_connection: Any, _record: Any) -> None:
    # After _sqlite_pragmas: this engine's commits are synced by Database.hot_write_session.
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    # No checkpoint inside the commit, in the gate: hot_write_session runs them after it.
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


def _sqlite_begin(conn: Any) -> None:
    if conn.get_execution_options().get("read_only"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=kwargs.pop("pool_size", 8),
            max_overflow=kwargs.pop("max_overflow", 8),
            **kwargs,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's implicit BEGIN is deferred; take the write lock up front so two
        # writers queue on busy_timeout instead of failing on lock upgrade.
        event.listen(engine, "begin", _sqlite_begin)

        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        return engine
    return create_engine(
        url,
        pool_size=kwargs.pop("pool_size", 10),
        max_overflow=kwargs.pop("max_overflow", 10),
        pool_pre_ping=True,
        **kwargs,
    )


class Database:
    """One engine and its session factory; the unit passed around instead of globals."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = is_sqlite(self.url)
        database = make_url(self.url).database if self.is_sqlite else None
        on_disk = bool(database) and database != ":memory:" and "mode=memory" not in self.url
        # The database file (SQLite on disk), for the locks kept beside it.
        self.sqlite_path = str(Path(database).resolve()) if on_disk and database else None
        self._gate = WriteGate(self.sqlite_path) if self.sqlite_path else None
        self.engine = make_engine(self.url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessions = sessionmaker(
            self.engine.execution_options(read_only=True), expire_on_commit=False
        )
        # SQLite on disk: the hot writers' own engine (it connects on first use) and WAL.
        self._hot: tuple[Engine, WalFile] | None = None
        if self.sqlite_path:
            hot_engine = make_engine(self.url, pool_size=1, max_overflow=2)
            event.listen(hot_engine, "connect", _sqlite_commit_without_sync)
            self._hot = (hot_engine, WalFile(self.sqlite_path))
        self._hot_commits = 0

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self.sessions.begin() as session:
            yield session

    @contextmanager
    def hot_write(self) -> Iterator[None]:
        """Around a write on the hot path: queue behind the other hot writers (SQLite)."""
        if self._gate is None:
            yield
            return
        with self._gate.hold():
            yield

    @contextmanager
    def hot_write_session(self) -> Iterator[Session]:
        """A write transaction on the hot path, queued at the write gate (SQLite).

        On SQLite it commits with ``synchronous=NORMAL`` inside the gate and the WAL is
        fdatasync'd after the gate is released: the writers queued behind it wait for the
        transaction, not for the disk. It still returns only once the commit is on disk. How
        long the gate was held is left in ``session.info[WRITE_GATE_SECONDS]``, and when it
        was released in ``session.info[WRITE_GATE_RELEASED_AT]``.
        """
        if self._gate is None or self._hot is None:
            with self.session() as session:
                yield session
            return
        engine, wal = self._hot
        with self._gate.hold():
            held_from = time.perf_counter()
            with Session(engine, expire_on_commit=False) as session, session.begin():
                yield session
        released_at = time.perf_counter()
        session.info[WRITE_GATE_SECONDS] = released_at - held_from
        session.info[WRITE_GATE_RELEASED_AT] = released_at
        wal.sync()
        self._hot_commits += 1
        if self._hot_commits % HOT_CHECKPOINT_EVERY == 0:
            # PASSIVE: copies the WAL back beside the other writers, never blocking them.
            raw = engine.raw_connection()  # in autocommit: no transaction around it
            try:
                raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").close()
            finally:
                raw.close()

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads only (on SQLite it does not take the write lock)."""
        with self.read_sessions() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if self._hot is not None:
            self._hot[0].dispose()
            self._hot[1].close()
