"""Group commit for the inbox: concurrent deliveries are committed together, each answered
only after the commit that holds it (fsync'd) has returned.

A dedicated writer thread takes whatever has queued up, writes it with one
``INSERT … ON CONFLICT (event_id) DO UPDATE SET delivery_count = delivery_count + n``
and commits. A redelivery only bumps the counter; the first copy's body stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from ehi_bridge.db.engine import Database
from ehi_bridge.webhooks.models import InboxEvent, InboxStatus

log = structlog.get_logger(__name__)

MAX_BATCH = 1000


class InboxUnavailable(Exception):
    """The delivery could not be committed (database down, writer stopped)."""


@dataclass(slots=True)
class Delivery:
    event_id: str
    webhook_id: str
    event_type: str
    api_mode: str
    body: bytes
    received_at: datetime
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

    def __init__(self, db: Database) -> None:
        placeholder = "?" if db.is_sqlite else "%s"  # sqlite3 qmark, psycopg format
        self.sql = (
            f"INSERT INTO inbox_events ({', '.join(self.COLUMNS)}) "
            f"VALUES ({', '.join([placeholder] * len(self.COLUMNS))}) "
            "ON CONFLICT (event_id) DO UPDATE SET "
            "delivery_count = inbox_events.delivery_count + excluded.delivery_count, "
            "last_received_at = excluded.last_received_at"
        )
        column = InboxEvent.__table__.c.received_at
        self.datetime_processor = column.type._cached_bind_processor(db.engine.dialect)

    def params(self, rows: list[dict[str, Any]]) -> list[Any]:
        convert = self.datetime_processor
        if convert is not None:
            for row in rows:
                row["received_at"] = convert(row["received_at"])
                row["last_received_at"] = convert(row["last_received_at"])
        return [tuple(row[name] for name in self.COLUMNS) for row in rows]


def _rows(batch: list[_Waiter]) -> list[dict[str, Any]]:
    """One row per distinct event id (a batch may hold several copies of one event)."""
    rows: dict[str, dict[str, Any]] = {}
    for delivery, _, _ in batch:
        row = rows.get(delivery.event_id)
        if row is not None:
            row["delivery_count"] += 1
            row["last_received_at"] = max(row["last_received_at"], delivery.received_at)
            continue
        rows[delivery.event_id] = {
            "event_id": delivery.event_id,
            "webhook_id": delivery.webhook_id,
            "event_type": delivery.event_type,
            "api_mode": delivery.api_mode,
            "body": delivery.body,
            "received_at": delivery.received_at,
            "last_received_at": delivery.received_at,
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


class InboxWriter:
    def __init__(
        self, db: Database, on_commit: Callable[[], None] | None = None, max_batch: int = MAX_BATCH
    ) -> None:
        self._db = db
        self._insert = _RawInsert(db)
        self._connection: Any = None
        self._queue: queue.SimpleQueue[_Waiter | object] = queue.SimpleQueue()
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._commits = 0
        self._running = False

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
        self._thread.start()
        if self._db.is_sqlite:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="inbox-checkpointer", daemon=True
            )
            self._checkpointer.start()

    def stop(self) -> None:
        """Stop after committing everything already submitted."""
        if self._thread is None:
            return
        self._running = False
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        self._thread = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=5)
            self._checkpointer = None

    def _checkpoint_loop(self) -> None:
        """SQLite: copy the WAL back into the database file without blocking commits."""
        checkpointed = 0
        while self._running:
            time.sleep(0.5)
            if self._commits == checkpointed:
                continue
            checkpointed = self._commits
            try:
                raw = self._db.engine.raw_connection()
                try:
                    raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    raw.close()
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

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Waiter] = [first]  # type: ignore[list-item]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            self._commit(batch)

    def _write(self, params: list[Any]) -> None:
        if self._connection is None:
            self._connection = self._db.engine.raw_connection()
            if self._db.is_sqlite:
                # Checkpoints run in their own thread, off the commit path (p99 latency).
                self._connection.cursor().execute("PRAGMA wal_autocheckpoint=0")
        connection = self._connection
        cursor = connection.cursor()
        try:
            if self._db.is_sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany(self._insert.sql, params)
            connection.commit()
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
                self._connection.invalidate()
            self._connection = None

    def _commit(self, batch: list[_Waiter]) -> None:
        error: BaseException | None = None
        try:
            self._write(self._insert.params(_rows(batch)))
        except Exception as exc:
            log.error("inbox commit failed", deliveries=len(batch), error_type=type(exc).__name__)
            error = InboxUnavailable("database unavailable")
            self._discard_connection()
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, future, loop in batch:
            by_loop.setdefault(loop, []).append(future)
        for loop, futures in by_loop.items():
            # RuntimeError: that loop has closed; nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, futures, error)
        if error is None and self._on_commit is not None:
            self._on_commit()
