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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite

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


def _upsert_statement(db: Database) -> Insert:
    table = InboxEvent.__table__
    insert = sqlite.insert(table) if db.is_sqlite else postgresql.insert(table)
    return insert.on_conflict_do_update(
        index_elements=[table.c.event_id],
        set_={
            "delivery_count": table.c.delivery_count + insert.excluded.delivery_count,
            "last_received_at": insert.excluded.last_received_at,
        },
    )


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
        self._statement = _upsert_statement(db)
        self._queue: queue.SimpleQueue[_Waiter | object] = queue.SimpleQueue()
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._thread: threading.Thread | None = None
        self._running = False

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after committing everything already submitted."""
        if self._thread is None:
            return
        self._running = False
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        self._thread = None

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

    def _commit(self, batch: list[_Waiter]) -> None:
        error: BaseException | None = None
        try:
            with self._db.engine.begin() as conn:
                conn.execute(self._statement, _rows(batch))
        except Exception as exc:
            log.error("inbox commit failed", deliveries=len(batch), error_type=type(exc).__name__)
            error = InboxUnavailable("database unavailable")
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, future, loop in batch:
            by_loop.setdefault(loop, []).append(future)
        for loop, futures in by_loop.items():
            # RuntimeError: that loop has closed; nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, futures, error)
        if error is None and self._on_commit is not None:
            self._on_commit()
