"""Writes of the ingest: resource rows, their earlier versions. All SQL for them is here.

Batched upserts keyed by ``(connection_id, resource_type, resource_id)`` that never rewrite
an unchanged resource. SQLite gets one ``INSERT … ON CONFLICT DO UPDATE … WHERE hash or
version differs`` through ``executemany``; PostgreSQL gets ``COPY`` (binary) into a
temporary table, then one ``INSERT … SELECT … ON CONFLICT DO UPDATE``. Before a stored row
is replaced, :meth:`ResourceWriter.archive` copies it into ``resource_versions``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, Final, cast

from sqlalchemy import Column, Connection, MetaData, Table, func, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from ehi_bridge.db.engine import sqlite_wal_database
from ehi_bridge.records.models import Resource, ResourceVersion
from ehi_bridge.records.seen import LOOKUP_CHUNK, Key

RESOURCES = cast(Table, Resource.__table__)
VERSIONS = cast(Table, ResourceVersion.__table__)

# Column order of every row the ingest writes.
WRITE_COLUMNS: Final = (
    "connection_id",
    "resource_type",
    "resource_id",
    "raw",
    "content_hash",
    "version",
    "last_updated",
    "patient_ref",
    "export_id",
    "ingested_at",
    "revoked",
    "bundle_entry",
)
_UPDATED_ON_CONFLICT: Final = (
    "raw",
    "content_hash",
    "version",
    "last_updated",
    "patient_ref",
    "export_id",
    "ingested_at",
    "bundle_entry",
)
_PG_TYPES: Final = [
    "varchar",
    "varchar",
    "varchar",
    "bytea",
    "bytea",
    "int4",
    "varchar",
    "varchar",
    "int8",
    "timestamptz",
    "bool",
    "text",
]
_STAGE_TABLE: Final = "ehi_ingest_stage"
# The WAL restarts once it holds this many frames (32 MiB at 4 KiB a page). A WAL that
# keeps growing costs the kernel a fresh, zeroed block for every frame (frames are not
# block-aligned) and page-cache pages; a small one is rewritten in place. On a 300k-resource
# import, 256 MiB cost 3.4-6.4 s of system CPU and 32 MiB 2.9-3.5 s (docs/benchmarks.md).
SQLITE_INGEST_CHECKPOINT: Final = 8192
SQLITE_INGEST_CHECKPOINT_FROM: Final = 2048  # no background checkpoint below ~8 MiB
SQLITE_INGEST_CACHE_KIB: Final = 16 * 1024  # page cache of the writing connection
SQLITE_ROWS_PER_STATEMENT: Final = 64  # x 12 columns: well under SQLite's 32,766 variables


@dataclass(frozen=True, slots=True)
class StoredState:
    """What the database holds for one key, as far as the ingest needs to know."""

    content_hash: bytes
    version: int
    ingested_at: datetime


# --------------------------------------------------------------------------- write side


class ResourceWriter:
    """Writes batches of resource rows on one SQLAlchemy ``Connection`` (its transaction).

    Rows are tuples in :data:`WRITE_COLUMNS` order. Build one per ingest run.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self._checkpointer: WalCheckpointer | None = None
        column_type = RESOURCES.c.ingested_at.type
        # The full bind chain (TypeDecorator + dialect impl), as SQLAlchemy itself stores it.
        processor = column_type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        self._bind_time: Callable[[Any], Any] = processor or (lambda value: value)
        if self.dialect == "sqlite":
            self._sql = self._sqlite_upsert_sql()
            # Many rows per statement: one sqlite3_step (run without the GIL) per group
            # instead of per row, so the frame reader thread and SQLite overlap.
            group = "(" + ", ".join("?" for _ in WRITE_COLUMNS) + ")"
            if group not in self._sql:  # pragma: no cover - guards the SQL layout
                raise RuntimeError("unexpected INSERT layout")
            self._multi_sql = self._sql.replace(
                group, ", ".join(group for _ in range(SQLITE_ROWS_PER_STATEMENT)), 1
            )
        elif self.dialect == "postgresql":
            self._sql = self._pg_upsert_sql()
        else:  # pragma: no cover - only SQLite and PostgreSQL are supported
            raise ValueError(f"unsupported database: {self.dialect}")

    def bind_time(self, value: datetime) -> Any:
        """``ingested_at`` as the driver wants it (SQLite stores the UTC text form)."""
        return self._bind_time(value)

    def _sqlite_upsert_sql(self) -> str:
        stmt = sqlite.insert(RESOURCES)
        stmt = stmt.on_conflict_do_update(
            index_elements=["connection_id", "resource_type", "resource_id"],
            set_={name: stmt.excluded[name] for name in _UPDATED_ON_CONFLICT},
            where=(RESOURCES.c.content_hash != stmt.excluded.content_hash)
            | (RESOURCES.c.version != stmt.excluded.version),
        )
        compiled = stmt.values({name: None for name in WRITE_COLUMNS}).compile(
            dialect=self.conn.dialect
        )
        positions = compiled.positiontup or []
        if tuple(positions) != WRITE_COLUMNS:  # pragma: no cover - guards the tuple layout
            raise RuntimeError(f"unexpected parameter order {positions}")
        return str(compiled)

    def _pg_upsert_sql(self) -> str:

        stage = Table(
            _STAGE_TABLE,
            MetaData(),
            *(Column(name, RESOURCES.c[name].type) for name in WRITE_COLUMNS),
        )
        stmt = postgresql.insert(RESOURCES).from_select(
            list(WRITE_COLUMNS), select(*(stage.c[name] for name in WRITE_COLUMNS))
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["connection_id", "resource_type", "resource_id"],
            set_={name: stmt.excluded[name] for name in _UPDATED_ON_CONFLICT},
            where=RESOURCES.c.content_hash.is_distinct_from(stmt.excluded.content_hash)
            | (RESOURCES.c.version != stmt.excluded.version),
        )
        return str(stmt.compile(dialect=self.conn.dialect))

    def prepare(self) -> None:
        """Per-connection set-up: the PostgreSQL staging table; on SQLite a larger page
        cache and WAL checkpoints on a background thread."""
        if self.dialect == "postgresql":
            self.conn.exec_driver_sql(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE_TABLE} ("
                "connection_id varchar(64), resource_type varchar(64), "
                "resource_id varchar(255), raw bytea, content_hash bytea, version integer, "
                "last_updated varchar(64), patient_ref varchar(255), export_id bigint, "
                "ingested_at timestamptz, revoked boolean, bundle_entry text) "
                "ON COMMIT DELETE ROWS"
            )
            return
        # With 4 KiB pages the default 2 MiB cache keeps too few index pages: they are
        # re-read from the WAL for every batch.
        self.conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_INGEST_CACHE_KIB}")
        database = sqlite_wal_database(self.conn.connection.dbapi_connection)
        if database is not None:
            # Checkpoints (WAL → database file: a read and a write of every page, and an
            # fsync) run on their own connection and thread, beside the writing instead of
            # inside its commits; this connection does not checkpoint meanwhile.
            self.conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = WalCheckpointer(database)
        else:
            self.conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={SQLITE_INGEST_CHECKPOINT}")

    def committed(self) -> None:
        """Called after each committed batch: lets the WAL be checkpointed (SQLite)."""
        if self._checkpointer is not None:
            self._checkpointer.committed()

    def release(self) -> None:
        if self.dialect == "sqlite":
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            self.conn.exec_driver_sql("PRAGMA wal_autocheckpoint=1000")  # SQLite's default
            self.conn.exec_driver_sql("PRAGMA cache_size=-2000")  # SQLite's default

    def upsert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert new keys; rewrite existing keys only where the content hash differs."""
        if not rows:
            return
        dbapi = self.conn.connection.driver_connection
        assert dbapi is not None
        if self.dialect == "sqlite":
            n = SQLITE_ROWS_PER_STATEMENT
            whole = len(rows) - len(rows) % n
            cursor = dbapi.cursor()
            try:
                if whole:
                    cursor.executemany(
                        self._multi_sql,
                        [
                            list(chain.from_iterable(rows[start : start + n]))
                            for start in range(0, whole, n)
                        ],
                    )
                if whole < len(rows):
                    cursor.executemany(self._sql, rows[whole:])
            finally:
                cursor.close()
            return
        with dbapi.cursor() as cursor:
            self._copy(cursor, _STAGE_TABLE, rows)
            cursor.execute(self._sql)
            cursor.execute(f"TRUNCATE {_STAGE_TABLE}")

    def insert_new(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows whose keys the caller knows are not stored yet (the common case).

        PostgreSQL: ``COPY`` straight into ``resources`` inside a savepoint; should a key
        exist after all (another writer), fall back to :meth:`upsert`. SQLite: the upsert
        is as fast as a plain insert.
        """
        if not rows:
            return
        if self.dialect == "sqlite":
            self.upsert(rows)
            return
        # Deliberately lazy: importing psycopg costs ~0.1 s, on every SQLite import too.
        import psycopg

        dbapi = self.conn.connection.driver_connection
        assert dbapi is not None
        try:
            with dbapi.transaction(), dbapi.cursor() as cursor:  # a savepoint
                self._copy(cursor, "resources", rows)
        except psycopg.errors.UniqueViolation:
            self.upsert(rows)

    @staticmethod
    def _copy(cursor: Any, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        columns = ", ".join(WRITE_COLUMNS)
        with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_PG_TYPES)
            for row in rows:
                copy.write_row(row)

    def lookup(self, connection_id: str, keys: Iterable[Key]) -> dict[Key, StoredState]:
        """Stored hash, version and ingested_at of those keys that exist."""
        wanted = list(keys)
        found: dict[Key, StoredState] = {}
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start : start + LOOKUP_CHUNK]
            query = select(
                Resource.resource_type,
                Resource.resource_id,
                Resource.content_hash,
                Resource.version,
                Resource.ingested_at,
            ).where(
                Resource.connection_id == connection_id,
                tuple_(Resource.resource_type, Resource.resource_id).in_(chunk),
            )
            for rtype, rid, chash, version, ingested_at in self.conn.execute(query):
                found[(rtype, rid)] = StoredState(bytes(chash), int(version), ingested_at)
        return found

    def count(self, connection_id: str) -> int:
        query = select(func.count()).where(Resource.connection_id == connection_id)
        return int(self.conn.scalar(query) or 0)

    def archive(self, connection_id: str, keys: Sequence[Key]) -> None:
        """Copy the stored rows of these keys into ``resource_versions`` (before a newer
        version replaces them); a version already archived is left alone."""
        if not keys:
            return
        self.conn.execute(
            text(
                "INSERT INTO resource_versions (connection_id, resource_type, resource_id, "
                "version, raw, content_hash, export_id, ingested_at) "
                "SELECT connection_id, resource_type, resource_id, version, raw, "
                "content_hash, export_id, ingested_at FROM resources "
                "WHERE connection_id = :c AND resource_type = :t AND resource_id = :i "
                "ON CONFLICT DO NOTHING"
            ),
            [{"c": connection_id, "t": t, "i": i} for t, i in keys],
        )

    def add_versions(self, rows: Sequence[dict[str, Any]]) -> None:
        """Earlier versions that never were the current row (repeats within one batch)."""
        if not rows:
            return
        insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        self.conn.execute(insert(VERSIONS).on_conflict_do_nothing(), list(rows))


# Commits the checkpoint thread may fall behind by before the writer waits for it.
MAX_UNSEEN_COMMITS = 3


class WalCheckpointer:
    """PASSIVE checkpoints of one SQLite database on a thread of their own.

    After each commit of the ingest, the thread copies the WAL's committed frames into the
    database file (its own connection; ``sqlite3`` releases the GIL while it runs), so the
    checkpoint overlaps the next batch. A WAL being appended to while it is checkpointed
    never restarts from its beginning, so once it holds more than
    :data:`SQLITE_INGEST_CHECKPOINT` frames the writer waits for the thread, checkpoints
    the rest itself (about one batch) and its next transaction starts the WAL afresh
    (unless a reader still uses it, as with SQLite's own auto-checkpoint). Durability is
    the writer's: every commit is fsync'd before it returns (``synchronous=FULL``).
    """

    def __init__(
        self,
        database: str,
        limit_frames: int = SQLITE_INGEST_CHECKPOINT,
        start_frames: int = SQLITE_INGEST_CHECKPOINT_FROM,
    ) -> None:
        self._db = sqlite3.connect(
            database, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.execute("PRAGMA synchronous=FULL")
        self._database = database
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._limit = limit_frames
        self._start = start_frames
        self._checkpointed = False
        self._cond = threading.Condition()
        self._wanted = False
        self._busy = False
        self._closed = False
        self._wal_frames = 0
        self._unseen_commits = 0
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ingest-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                self._wanted = False
                self._busy = True
            try:
                row = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                frames = int(row[1]) if row is not None else 0
            except BaseException as exc:  # re-raised on the writer's thread
                with self._cond:
                    if self._closed:  # interrupted by close()
                        self._busy = False
                        return
                    self._failure = exc
                    self._busy = False
                    self._cond.notify_all()
                return
            with self._cond:
                self._wal_frames = frames
                self._busy = False
                self._cond.notify_all()

    def _idle(self) -> None:
        with self._cond:
            while self._busy or self._wanted:
                if self._failure is not None:
                    break
                self._cond.wait()
            if self._failure is not None:
                raise self._failure

    def committed(self) -> None:
        with self._cond:
            if self._failure is not None:
                raise self._failure
            frames = self._wal_frames
            if not self._checkpointed:  # the WAL file has only grown so far
                frames = self._wal_file_frames()
        if frames > self._limit:
            self._idle()  # the thread's connection is free: use it here
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            with self._cond:
                self._wal_frames = 0
                self._checkpointed = True
            return
        if not self._checkpointed and frames < self._start:
            return  # a small WAL so far: checkpointed after the ingest, by SQLite's own
        with self._cond:
            # The frame count above is the thread's last look: while it has not caught up
            # (a busy machine), commits it has not seen pile up unmeasured. Past a few, wait.
            self._unseen_commits = self._unseen_commits + 1 if self._busy or self._wanted else 0
            self._wanted = True
            self._checkpointed = True
            self._cond.notify_all()
            lagging = self._unseen_commits >= MAX_UNSEEN_COMMITS
        if lagging:
            self._idle()

    def _wal_file_frames(self) -> int:
        try:
            return os.path.getsize(self._database + "-wal") // (self._page_size + 24)
        except OSError:
            return 0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            busy = self._busy
            self._cond.notify_all()
        if busy:  # the ingest is over: do not wait for the rest of a checkpoint
            self._db.interrupt()
        self._thread.join()
        self._db.close()
