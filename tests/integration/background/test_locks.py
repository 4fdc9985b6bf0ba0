"""The executor lock (one live process per executor id) and the SQLite write gate."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from ehi_bridge.background.executor_lock import ExecutorIdInUse, ExecutorLock
from ehi_bridge.db import wal
from ehi_bridge.db.engine import (
    HOT_CHECKPOINT_EVERY,
    WRITE_GATE_RELEASED_AT,
    WRITE_GATE_SECONDS,
    Database,
)
from ehi_bridge.db.migrate import upgrade
from ehi_bridge.db.write_gate import WriteGate


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'hot.sqlite3'}"
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


def test_one_holder_per_executor_id(database_url: str) -> None:
    first = ExecutorLock(database_url, "node-a")
    first.acquire(wait_seconds=0)
    try:
        with pytest.raises(ExecutorIdInUse, match="EHI_EXECUTOR_ID"):
            ExecutorLock(database_url, "node-a").acquire(wait_seconds=0.5)
        other = ExecutorLock(database_url, "node-b")
        other.acquire(wait_seconds=0)
        other.release()
    finally:
        first.release()
    again = ExecutorLock(database_url, "node-a")
    again.acquire(wait_seconds=0)
    again.release()


def test_a_waiting_process_gets_the_lock_once_the_holder_exits(database_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ehi_bridge.background.executor_lock import ExecutorLock\n"
            f"ExecutorLock({database_url!r}, 'node-c').acquire(0)\n"
            "print('held', flush=True)\n"
            "time.sleep(1.5)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(ExecutorIdInUse):
            ExecutorLock(database_url, "node-c").acquire(wait_seconds=0)
        waiting = ExecutorLock(database_url, "node-c")
        waiting.acquire(wait_seconds=30)  # the holder exits (no release) and the lock frees
        waiting.release()
    finally:
        holder.kill()
        holder.wait()


def test_write_gate_lets_one_writer_in_at_a_time(tmp_path: Path) -> None:
    gate = WriteGate(str(tmp_path / "db.sqlite3"))
    inside = 0
    most = 0
    lock = threading.Lock()

    def writer() -> None:
        nonlocal inside, most
        for _ in range(20):
            with gate.hold():
                with lock:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.001)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1


def test_write_gate_holds_another_process_back(tmp_path: Path) -> None:
    database = str(tmp_path / "db.sqlite3")
    gate = WriteGate(database)
    script = (
        "import time\n"
        "from ehi_bridge.db.write_gate import WriteGate\n"
        f"gate = WriteGate({database!r})\n"
        "start = time.monotonic()\n"
        "with gate.hold():\n"
        "    print(round(time.monotonic() - start, 3), flush=True)\n"
    )
    with gate.hold():
        other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        time.sleep(1.0)
        assert other.poll() is None  # still queued behind us
    out, _ = other.communicate(timeout=30)
    assert other.returncode == 0 and float(out) > 0.0


def test_a_hot_write_commits_inside_the_gate_and_syncs_the_wal_after_it(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sqlite_db.sqlite_path is not None
    gate_file = f"{sqlite_db.sqlite_path}-writegate"
    wal_file = f"{sqlite_db.sqlite_path}-wal"
    synced: list[tuple[str, bool]] = []
    synced_at: list[float] = []
    real_fdatasync = os.fdatasync

    def recording_fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        probe = os.open(gate_file, os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            gate_free = True
        except BlockingIOError:
            gate_free = False
        finally:
            os.close(probe)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), gate_free))
        synced_at.append(time.perf_counter())

    monkeypatch.setattr(wal.os, "fdatasync", recording_fdatasync)
    with sqlite_db.hot_write_session() as session:
        # 1 = NORMAL: the commit does not wait for the disk while others wait for the gate.
        assert session.execute(text("PRAGMA synchronous")).scalar() == 1
        session.execute(
            text("INSERT INTO instance_secrets VALUES ('probe', 'x', '2026-12-04 00:00:00')")
        )
        assert not synced
    assert synced == [(wal_file, True)]
    assert session.info[WRITE_GATE_SECONDS] > 0
    assert session.info[WRITE_GATE_RELEASED_AT] < synced_at[0]  # released, then synced
    with sqlite_db.read_session() as session:
        assert session.execute(text("SELECT value FROM instance_secrets")).scalars().all() == ["x"]
    # The ordinary sessions still commit with synchronous=FULL.
    with sqlite_db.session() as session:
        assert session.execute(text("PRAGMA synchronous")).scalar() == 2


def test_hot_writes_alone_keep_the_wal_checkpointed(sqlite_db: Database) -> None:
    """Hot writers never checkpoint inside their commit (``wal_autocheckpoint=0``): they do
    it after the gate. With no other writer, the WAL must still start over, not grow."""
    blob = "x" * 8000
    transactions = 40 * HOT_CHECKPOINT_EVERY
    for n in range(transactions):
        with sqlite_db.hot_write_session() as session:
            session.execute(
                text("INSERT INTO instance_secrets VALUES (:name, :value, '2026-12-04 00:00:00')"),
                {"name": f"probe-{n}", "value": blob},
            )
    wal_path = Path(f"{sqlite_db.sqlite_path}-wal")
    restarts = int.from_bytes(wal_path.read_bytes()[12:16], "big")
    assert restarts >= 10
    # Each commit appends at least two 4 KiB pages (the row overflows into one more).
    assert wal_path.stat().st_size < transactions * 2 * 4096 / 4
