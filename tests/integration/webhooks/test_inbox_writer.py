"""The inbox's group-commit writer against real databases: what is answered is stored,
a failed WAL sync is never answered as stored, and SQLite's WAL is recycled under load."""

from __future__ import annotations

import asyncio
import errno
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ehi_bridge.db import wal
from ehi_bridge.db.engine import Database
from ehi_bridge.db.migrate import upgrade
from ehi_bridge.webhooks import inbox
from ehi_bridge.webhooks.inbox import Delivery, InboxUnavailable, InboxWriter
from ehi_bridge.webhooks.models import InboxEvent


def _delivery(event_id: str | None = None) -> Delivery:
    return Delivery(
        event_id=event_id or str(uuid.uuid4()),
        webhook_id=f"msg_{uuid.uuid4().hex}",
        event_type="patient.connection_success",
        api_mode="test",
        body=b'{"id":"x","padding":"' + b"p" * 600 + b'"}',
        org_connection_id=f"org-{uuid.uuid4().hex}",
    )


async def _submit_concurrently(writer: InboxWriter, deliveries: list[Delivery]) -> None:
    await asyncio.gather(*(writer.submit(d) for d in deliveries))


def _count(db: Database) -> int:
    with db.read_session() as session:
        return int(session.scalar(select(func.count()).select_from(InboxEvent)) or 0)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    upgrade(url)
    return Database(url)


def test_answered_deliveries_are_stored_once_with_their_counts(db: Database) -> None:
    writer = InboxWriter(db)
    writer.start()
    try:
        first = [_delivery() for _ in range(300)]
        repeated = [_delivery(d.event_id) for d in first[:50]]
        asyncio.run(_submit_concurrently(writer, first + repeated))
    finally:
        writer.stop()
    assert _count(db) == 300
    with db.read_session() as session:
        rows = session.execute(select(InboxEvent.event_id, InboxEvent.delivery_count))
        counts = {event_id: count for event_id, count in rows}
    assert sum(counts.values()) == 350
    assert all(counts[d.event_id] == 2 for d in first[:50])


def test_sqlite_writer_commits_without_fsync_and_syncs_before_answering(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def recording_fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        synced.append(fd)

    monkeypatch.setattr(wal.os, "fdatasync", recording_fdatasync)
    writer = InboxWriter(sqlite_db)
    writer.start()
    try:
        asyncio.run(_submit_concurrently(writer, [_delivery() for _ in range(20)]))
        assert synced, "answered without syncing the WAL"
        wal_path = Path(str(sqlite_db.engine.url.database) + "-wal")
        assert all(os.readlink(f"/proc/self/fd/{fd}") == str(wal_path) for fd in set(synced))
        cursor = writer._connection.cursor()
        # 1 = NORMAL: durability comes from the syncer's fdatasync, not the commit.
        assert cursor.execute("PRAGMA synchronous").fetchone()[0] == 1
        cursor.close()
    finally:
        writer.stop()
    assert _count(sqlite_db) == 20


def test_a_failed_wal_sync_is_answered_unavailable_and_the_writer_recovers(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fdatasync = os.fdatasync

    def failing_fdatasync(_fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    writer = InboxWriter(sqlite_db)
    writer.start()
    try:
        monkeypatch.setattr(wal.os, "fdatasync", failing_fdatasync)
        lost = _delivery()
        with pytest.raises(InboxUnavailable):
            asyncio.run(writer.submit(lost))
        monkeypatch.setattr(wal.os, "fdatasync", real_fdatasync)
        # Fasten redelivers what was not answered 2xx: it is stored once, counted twice.
        asyncio.run(writer.submit(_delivery(lost.event_id)))
        asyncio.run(writer.submit(_delivery()))
    finally:
        writer.stop()
    with sqlite_db.read_session() as session:
        count = session.scalar(
            select(InboxEvent.delivery_count).where(InboxEvent.event_id == lost.event_id)
        )
    assert count == 2
    assert _count(sqlite_db) == 2


def test_sqlite_wal_is_recycled_under_sustained_writes(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "CHECKPOINT_INTERVAL_SECONDS", 0.005)
    writer = InboxWriter(sqlite_db)
    writer.start()
    rounds, per_round, checkpoint_every = 1500, 8, 25
    try:

        async def sustained() -> None:
            for n in range(rounds):
                await _submit_concurrently(writer, [_delivery() for _ in range(per_round)])
                if n % checkpoint_every == checkpoint_every - 1:
                    # On a starved machine the checkpointer's thread may not have run yet:
                    # wait for its next pass, so the test checks recycling, not scheduling.
                    passes = writer.checkpoint_passes
                    for _ in range(1000):
                        if writer.checkpoint_passes > passes:
                            break
                        await asyncio.sleep(0.01)

        asyncio.run(sustained())
        wal_path = Path(str(sqlite_db.engine.url.database) + "-wal")
        wal_bytes = wal_path.stat().st_size
        # The WAL header's checkpoint sequence number counts the times the log started over.
        restarts = int.from_bytes(wal_path.read_bytes()[12:16], "big")
    finally:
        writer.stop()
    assert _count(sqlite_db) == rounds * per_round
    # A restart needs the checkpointer's pass and then a quiet moment between two batches: the
    # log starts over after most of the passes the test waited for, whatever the machine's load.
    assert restarts >= rounds // checkpoint_every // 3
    # Every commit appends at least two 4 KiB page frames (a table leaf and an event-id index
    # leaf): a WAL that was never started over would hold them all.
    never_recycled = rounds * 2 * (4096 + 24)
    assert wal_bytes < never_recycled / 2


async def _outcomes(writer: InboxWriter, deliveries: list[Delivery]) -> list[str]:
    results = await asyncio.gather(*(writer.submit(d) for d in deliveries), return_exceptions=True)
    return [type(r).__name__ if r is not None else "stored" for r in results]


def test_one_delivery_the_database_refuses_fails_alone_in_its_batch(db: Database) -> None:
    """Past the door checks, a refused row splits its batch until it stands alone."""
    writer = InboxWriter(db)
    good = [_delivery() for _ in range(200)]
    # A lone surrogate: valid in a Python str, refused by both drivers when encoding.
    bad = _delivery()
    bad.event_type = "patient.\ud800"
    writer.start()
    try:
        outcomes = asyncio.run(_outcomes(writer, [*good[:100], bad, *good[100:]]))
    finally:
        writer.stop()
    assert outcomes[100] == "DeliveryUnstorable"
    assert outcomes[:100] + outcomes[101:] == ["stored"] * 200
    assert _count(db) == 200
