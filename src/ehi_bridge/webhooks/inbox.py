"""Group commit for the inbox: concurrent deliveries are committed together, each answered
only after the commit that holds it is on disk.

A dedicated writer thread takes whatever has queued up, writes it with multi-row
``INSERT … ON CONFLICT (event_id, api_mode) DO UPDATE SET delivery_count = delivery_count + n``
and commits. A redelivery only bumps the counter; the first copy's body stays. Event ids
are unique per mode: test and live are separate Fasten accounts, and a live event whose id
a test event already used is a different event, stored on its own.

One delivery that the database refuses must not fail its neighbours: the envelope checks at
the door keep such deliveries out, and if a batch still fails with an error that is not the
database being unreachable, it is split in halves and each half written again, down to the
single delivery, which alone is answered :class:`DeliveryUnstorable` (a 4xx).

PostgreSQL (``synchronous_commit=on``): a commit is durable when it returns, so the batch
is answered then. SQLite: the writer's connection commits with ``synchronous=NORMAL`` — the
batch's frames are in the WAL but not yet on disk — and hands the batch to a syncer thread,
which ``fdatasync``s the WAL and only then answers it. That is the same guarantee as
``synchronous=FULL`` (a 2xx only after the commit holding it is on disk; recovery replays
the WAL's complete commits), but the fsync of one batch overlaps the B-tree work of the next
instead of stalling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from ehi_bridge.db.engine import Database, sqlite_wal_database
from ehi_bridge.db.wal import WalFile
from ehi_bridge.webhooks.models import InboxEvent, InboxStatus

log = structlog.get_logger(__name__)

MAX_BATCH = 1000
WRITER_CACHE_KIB = 65536
CHECKPOINT_INTERVAL_SECONDS = 1.0
CHECKPOINT_PASSES = 8
TAIL_FRAMES = 256


class InboxUnavailable(Exception):
    """The delivery could not be committed (database down, writer stopped)."""


class DeliveryUnstorable(InboxUnavailable):
    """The database refused this one delivery by itself: retrying it cannot succeed."""


@dataclass(slots=True)
class Delivery:
    event_id: str
    webhook_id: str
    event_type: str
    api_mode: str
    body: bytes
    org_connection_id: str | None


_Waiter = tuple[Delivery, asyncio.Future[None], asyncio.AbstractEventLoop]
_STOP = object()


class _RawInsert:
    """The upsert as driver SQL, executed on a raw DBAPI connection.

    The hot path skips SQLAlchemy's per-row parameter processing; only the two datetime
    columns need converting, done with the column type's own bind processor so the stored
    values are exactly what the ORM writes and reads. The SQL is the same on SQLite and
    PostgreSQL but for the placeholder style.
    """

    COLUMNS = (
        "event_id", "webhook_id", "event_type", "api_mode", "body", "received_at",
        "last_received_at", "delivery_count", "status", "org_connection_id", "attempts",
        "apply_count", "replays",
    )  # fmt: skip

    ROWS_PER_STATEMENT = 64

    def __init__(self, db: Database) -> None:
        self._placeholder = "?" if db.is_sqlite else "%s"  # sqlite3 qmark, psycopg format
        self._statements: dict[int, str] = {}
        column = InboxEvent.__table__.c.received_at
        self.datetime_processor = column.type._cached_bind_processor(db.engine.dialect)

    def statement(self, rows: int) -> str:
        """The upsert of ``rows`` rows as one statement: one ``sqlite3_step`` (one GIL
        hand-over) or one server round trip for the whole batch instead of one per row."""
        sql = self._statements.get(rows)
        if sql is None:
            values = "(" + ", ".join([self._placeholder] * len(self.COLUMNS)) + ")"
            sql = self._statements[rows] = (
                f"INSERT INTO inbox_events ({', '.join(self.COLUMNS)}) "
                f"VALUES {', '.join([values] * rows)} "
                "ON CONFLICT (event_id, api_mode) DO UPDATE SET "
                "delivery_count = inbox_events.delivery_count + excluded.delivery_count, "
                "last_received_at = excluded.last_received_at"
            )
        return sql

    def chunks(
        self, rows: list[dict[str, Any]], received_at: datetime
    ) -> list[tuple[str, list[Any]]]:
        """(statement, flat parameters) per chunk of at most ``ROWS_PER_STATEMENT`` rows.

        Every row of a batch gets the batch's receive time, converted once.
        """
        convert = self.datetime_processor
        stamp = convert(received_at) if convert is not None else received_at
        for row in rows:
            row["received_at"] = row["last_received_at"] = stamp
        size = self.ROWS_PER_STATEMENT
        return [
            (
                self.statement(len(chunk)),
                [row[name] for row in chunk for name in self.COLUMNS],
            )
            for chunk in (rows[i : i + size] for i in range(0, len(rows), size))
        ]


def _rows(batch: list[_Waiter]) -> list[dict[str, Any]]:
    """One row per distinct event id (a batch may hold several copies of one event)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for delivery, _, _ in batch:
        key = (delivery.event_id, delivery.api_mode)
        row = rows.get(key)
        if row is not None:
            row["delivery_count"] += 1
            continue
        rows[key] = {
            "event_id": delivery.event_id,
            "webhook_id": delivery.webhook_id,
            "event_type": delivery.event_type,
            "api_mode": delivery.api_mode,
            "body": delivery.body,
            "delivery_count": 1,
            "status": InboxStatus.RECEIVED,
            "org_connection_id": delivery.org_connection_id,
            "attempts": 0,
            "apply_count": 0,
            "replays": 0,
        }
    return list(rows.values())


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _answer(batch: list[_Waiter], error: BaseException | None) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _, future, loop in batch:
        by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        # RuntimeError: that loop has closed; nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, futures, error)


def _take(source: queue.SimpleQueue[Any], first: Any, limit: int) -> tuple[list[Any], bool]:
    """``first`` and whatever else has queued up (at most ``limit``); True if told to stop."""
    items = [first]
    while len(items) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        if item is _STOP:
            return items, True
        items.append(item)
    return items, False


class InboxWriter:
    def __init__(
        self, db: Database, on_commit: Callable[[], None] | None = None, max_batch: int = MAX_BATCH
    ) -> None:
        self._db = db
        self._insert = _RawInsert(db)
        self._connection: Any = None
        self._queue: queue.SimpleQueue[_Waiter | object] = queue.SimpleQueue()
        # SQLite: committed batches waiting for the WAL's fdatasync.
        self._committed: queue.SimpleQueue[list[_Waiter] | object] = queue.SimpleQueue()
        self._wal: WalFile | None = None  # set on connecting to an SQLite database file
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._threads: list[threading.Thread] = []
        self._commits = 0
        self._running = False
        self._tail_due = threading.Event()  # the writer should checkpoint the WAL's tail
        self.checkpoint_passes = 0  # rounds of the checkpointer so far (tests wait on it)

    def start(self) -> None:
        if self._threads:
            return
        self._running = True
        targets: list[tuple[Callable[[], None], str]] = [(self._run, "inbox-writer")]
        if self._db.is_sqlite:
            targets.append((self._sync_loop, "inbox-syncer"))
            targets.append((self._checkpoint_loop, "inbox-checkpointer"))
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop after committing (and syncing) everything already submitted."""
        if not self._threads:
            return
        self._running = False
        self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []
        self._discard_connection()
        if self._wal is not None:
            self._wal.close()

    def _checkpoint_loop(self) -> None:
        """SQLite: copy the WAL back into the database file without blocking commits.

        Passive checkpoints run here, next to the writer, until what the writer appended
        meanwhile is a short tail; the writer then checkpoints that tail itself between two
        batches. With every frame copied and no writer in between, its next transaction
        starts the WAL over from the beginning: the file is recycled instead of growing
        (appending to a growing file costs new pages and a metadata journal commit per fsync).
        """
        checkpointed = 0
        while self._running:
            time.sleep(CHECKPOINT_INTERVAL_SECONDS)
            if self._commits == checkpointed:
                continue
            checkpointed = self._commits
            try:
                raw = self._db.engine.raw_connection()
                try:
                    cursor = raw.cursor()
                    frames_before: int | None = None
                    for _ in range(CHECKPOINT_PASSES):
                        row = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        frames = int(row[1])
                        if frames_before is not None and frames - frames_before <= TAIL_FRAMES:
                            break  # appended during the last pass: short (or the WAL restarted)
                        frames_before = frames
                finally:
                    raw.close()
                self._tail_due.set()
                self.checkpoint_passes += 1
            except Exception as exc:
                log.warning("wal checkpoint failed", error_type=type(exc).__name__)

    async def submit(self, delivery: Delivery) -> None:
        """Return once the delivery is durably committed; raise ``InboxUnavailable`` if not."""
        if not self._running:
            raise InboxUnavailable("inbox writer is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put((delivery, future, loop))
        await future

    def _consume(self, source: queue.SimpleQueue[Any], handle: Callable[[list[Any]], None]) -> None:
        """Hand whatever has queued up to ``handle``, until told to stop."""
        stopping = False
        while not stopping:
            first = source.get()
            if first is _STOP:
                break
            items, stopping = _take(source, first, self._max_batch)
            handle(items)

    def _run(self) -> None:
        self._consume(self._queue, self._commit)
        self._committed.put(_STOP)

    def _sync_loop(self) -> None:
        self._consume(self._committed, self._sync)

    def _sync(self, batches: list[list[_Waiter]]) -> None:
        wal = self._wal
        assert wal is not None  # batches are queued here only once it is known
        error: BaseException | None = None
        try:
            wal.sync()
        except OSError as exc:
            # Committed but perhaps not on disk: no 2xx. Fasten retries; the redelivery is
            # deduplicated by the event id.
            log.error("inbox wal sync failed", error_type=type(exc).__name__)
            wal.close()
            error = InboxUnavailable("database unavailable")
        for batch in batches:
            _answer(batch, error)
        if error is None and self._on_commit is not None:
            self._on_commit()

    def _connect(self) -> Any:
        connection = self._db.engine.raw_connection()
        # The writer's own connection, in autocommit (``_write``): out of the pool, so that
        # mode never reaches a session.
        connection.detach()
        if not self._db.is_sqlite:
            dbapi_connection = connection.dbapi_connection
            assert dbapi_connection is not None  # just checked out
            dbapi_connection.autocommit = True
            return connection
        # pysqlite connections of this engine are in autocommit already.
        cursor = connection.cursor()
        # Checkpoints run in their own thread, off the commit path (p99 latency).
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        # The event-id index is written at random: keep it in memory.
        cursor.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        database = sqlite_wal_database(connection)
        if database is not None:
            if self._wal is not None:
                self._wal.close()
            self._wal = WalFile(database)
            # Durability comes from the syncer's fdatasync before any answer.
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        return connection

    def _write(self, chunks: list[tuple[str, list[Any]]]) -> None:
        if self._connection is None:
            self._connection = self._connect()
        connection = self._connection
        cursor = connection.cursor()
        try:
            with self._db.hot_write():
                if self._tail_due.is_set():
                    # Between two batches, so nothing is appended meanwhile: this commit can
                    # start the WAL over.
                    self._tail_due.clear()
                    cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                if len(chunks) == 1:
                    # Autocommit: the statement is its own transaction. On SQLite it commits in
                    # the same sqlite3_step (BEGIN and COMMIT would each hand the GIL back and
                    # forth with the event loop once more); on PostgreSQL it is one round trip.
                    cursor.execute(*chunks[0])
                else:
                    cursor.execute("BEGIN IMMEDIATE" if self._db.is_sqlite else "BEGIN")
                    for sql, params in chunks:
                        cursor.execute(sql, params)
                    cursor.execute("COMMIT")
            self._commits += 1
        except BaseException:
            with contextlib.suppress(Exception):
                connection.rollback()
            raise
        finally:
            cursor.close()

    def _discard_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()  # detached: closes the DBAPI connection
            self._connection = None

    def _unreachable(self, exc: BaseException) -> bool:
        """The database (not the batch) failed: connection lost, locked, disk full."""
        dbapi = self._db.engine.dialect.dbapi
        kinds = tuple(
            kind
            for kind in (
                getattr(dbapi, "OperationalError", None),
                getattr(dbapi, "InterfaceError", None),
            )
            if isinstance(kind, type)
        )
        return isinstance(exc, kinds)

    def _commit(self, batch: list[_Waiter]) -> None:
        try:
            self._write(self._insert.chunks(_rows(batch), datetime.now(UTC)))
        except Exception as exc:
            log.error("inbox commit failed", deliveries=len(batch), error_type=type(exc).__name__)
            self._discard_connection()
            if self._unreachable(exc):
                _answer(batch, InboxUnavailable("database unavailable"))
            elif len(batch) == 1:
                _answer(batch, DeliveryUnstorable("the database refused this delivery"))
            else:
                middle = len(batch) // 2
                self._commit(batch[:middle])
                self._commit(batch[middle:])
            return
        if self._wal is not None:
            self._committed.put(batch)
            return
        _answer(batch, None)
        if self._on_commit is not None:
            self._on_commit()
