"""The ingest's parser process: separate, cleaned up, and its failures surface."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from ehi_bridge.db.engine import Database
from ehi_bridge.records import ingest, parser_process
from ehi_bridge.records.ingest import ParserProcessError, ingest_file
from ehi_bridge.records.writer import WalCheckpointer
from tests.integration.records.helpers import (
    duplicate_keys,
    errors,
    new_connection,
    row_count,
    scaled_lines,
    stored,
    write_lines,
)


class _Boom(Exception):
    pass


@pytest.fixture
def parser_pids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pid of every parser process started during the test."""
    pids: list[int] = []

    class Recording(ingest._ParserProcess):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pids.append(self.pid)

    monkeypatch.setattr(ingest, "_ParserProcess", Recording)
    return pids


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_parsing_runs_in_another_process_that_is_reaped(
    db: Database, tmp_path: Path, parser_pids: list[int]
) -> None:
    connection_id = new_connection(db)
    lines = scaled_lines(2)
    report = ingest_file(
        db, write_lines(tmp_path / "a.ndjson", lines), connection_id=connection_id, export_id=None
    )
    assert report.complete and report.inserted == len(lines)
    assert len(parser_pids) == 1 and parser_pids[0] != os.getpid()
    assert _gone(parser_pids[0])
    assert report.parser_peak_rss_kib > 0


def test_the_parser_process_is_gone_after_an_ingest_that_raises(
    db: Database, tmp_path: Path, parser_pids: list[int]
) -> None:
    connection_id = new_connection(db)
    lines = scaled_lines(8)  # ~2,000 resources, far more than one batch of 50
    path = write_lines(tmp_path / "big.ndjson", lines)

    def fail(_: int) -> None:
        raise _Boom

    with pytest.raises(_Boom):
        ingest_file(
            db, path, connection_id=connection_id, export_id=None, progress=fail, batch_rows=50
        )
    assert len(parser_pids) == 1 and _gone(parser_pids[0])
    assert row_count(db, connection_id) == 50  # the first batch was committed, no more

    # A later ingest of the same file is exact.
    report = ingest_file(db, path, connection_id=connection_id, export_id=None, batch_rows=50)
    assert report.complete and report.inserted == len(lines) - 50 and report.unchanged == 50
    assert row_count(db, connection_id) == len(lines) and duplicate_keys(db) == []


def test_a_killed_parser_process_fails_the_ingest_and_a_rerun_is_exact(
    db: Database, tmp_path: Path, parser_pids: list[int]
) -> None:
    connection_id = new_connection(db)
    lines = scaled_lines(12)
    path = write_lines(tmp_path / "big.ndjson", lines)

    def kill_parser(_: int) -> None:
        if _gone(parser_pids[0]) is False:
            os.kill(parser_pids[0], signal.SIGKILL)

    with pytest.raises(ParserProcessError, match="ended early"):
        ingest_file(
            db,
            path,
            connection_id=connection_id,
            export_id=None,
            progress=kill_parser,
            batch_rows=20,
        )
    assert 0 < row_count(db, connection_id) < len(lines)
    report = ingest_file(db, path, connection_id=connection_id, export_id=None)
    assert report.complete and report.resources == len(lines)
    assert report.inserted + report.unchanged == len(lines) and report.updated == 0
    assert row_count(db, connection_id) == len(lines) and duplicate_keys(db) == []


def test_malformed_lines_beyond_the_first_chunks_keep_their_line_numbers(
    db: Database, tmp_path: Path
) -> None:
    connection_id = new_connection(db)
    lines = scaled_lines(8)
    assert len(lines) > 3 * parser_process.CHUNK_ROWS
    bad = {1, parser_process.CHUNK_ROWS + 1, 2 * parser_process.CHUNK_ROWS + 7, len(lines) + 4}
    out: list[bytes] = []
    source = iter(lines)
    for number in range(1, len(lines) + len(bad) + 1):
        out.append(b'{"resourceType": "Patient", "id": ' if number in bad else next(source))
    path = write_lines(tmp_path / "bad.ndjson", out)
    report = ingest_file(db, path, connection_id=connection_id, export_id=None)
    assert report.errors == len(bad) and report.inserted == len(lines)
    assert report.status == "partial"
    assert [e["line"] for e in report.error_samples] == sorted(bad)
    assert errors(db, connection_id) == [(None, n, "invalid JSON") for n in sorted(bad)]
    rows = stored(db, connection_id)
    first = orjson.loads(lines[0])
    assert rows[(first["resourceType"], first["id"])].raw == lines[0]


@pytest.mark.parametrize(
    ("limit_frames", "start_frames"),
    [(100, 0), (100, 50), (10**9, 10**9)],
    ids=["checkpointing", "from-50-frames", "never"],
)
def test_wal_checkpointer_lets_the_wal_restart(
    tmp_path: Path, limit_frames: int, start_frames: int
) -> None:
    """Checkpointed beside the writes, the WAL still goes back to its start: it never
    holds more than about the limit plus a few transactions. Below ``start_frames`` it
    does not checkpoint at all."""
    path = str(tmp_path / "wal.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    checkpointer = WalCheckpointer(path, limit_frames=limit_frames, start_frames=start_frames)
    frames_per_commit = 30  # 30 rows of 3 KB: one page each
    most = 0
    try:
        for _ in range(60):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO t (body) VALUES (?)", [(os.urandom(3000),)] * frames_per_commit
            )
            conn.execute("COMMIT")
            checkpointer.committed()
            most = max(most, os.path.getsize(path + "-wal") // 4096)
    finally:
        checkpointer.close()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (60 * frames_per_commit,)
    if limit_frames > 60 * frames_per_commit:  # never checkpointed: it holds all 60 commits
        assert most >= 60 * frames_per_commit
    else:  # without restarts it would hold all of them too
        assert most < limit_frames + 10 * frames_per_commit
    conn.close()


def test_a_parser_kept_ready_is_used_by_the_next_ingest_then_replaced(
    db: Database, tmp_path: Path, parser_pids: list[int]
) -> None:
    parser_process.keep_parser_ready()
    try:
        ready = parser_process.ready_parser._ready
        assert ready is not None
        connection_id = new_connection(db)
        lines = scaled_lines(2)
        report = ingest_file(
            db,
            write_lines(tmp_path / "a.ndjson", lines),
            connection_id=connection_id,
            export_id=None,
        )
        assert report.complete and report.inserted == len(lines)
        assert parser_pids == [ready.pid]
        assert _gone(ready.pid)
        replacement = parser_process.ready_parser._ready
        assert replacement is not None and replacement.pid != ready.pid
        assert replacement.poll() is None
    finally:
        parser_process.stop_ready_parser()
    assert _gone(replacement.pid)


def test_a_ready_parser_exits_when_the_service_that_started_it_dies(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    service = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ehi_bridge.records import parser_process\n"
            "parser_process.keep_parser_ready()\n"
            "print(parser_process.ready_parser._ready.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert service.stdout is not None
    ready_pid = int(service.stdout.readline())
    assert not _gone(ready_pid)
    service.send_signal(signal.SIGKILL)
    service.wait()
    deadline = time.monotonic() + 20
    while not _gone(ready_pid) and time.monotonic() < deadline:
        # Reap it if it became ours (it was re-parented to init or to this test's process).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(ready_pid, os.WNOHANG)
        time.sleep(0.05)
    assert _gone(ready_pid)
