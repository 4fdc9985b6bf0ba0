"""The background runtime as serve's child runs it, in this process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from ehi_bridge.config import Settings
from ehi_bridge.connections import repository as connections_repo
from ehi_bridge.db.engine import Database
from ehi_bridge.exports import repository as exports_repo
from ehi_bridge.exports.models import Export
from ehi_bridge.outbox.models import OutboxItem
from ehi_bridge.runtime import APPLIER_THREAD_NAME, Runtime, executor_threads
from ehi_bridge.webhooks.models import InboxEvent
from tests.integration.webhooks.helpers import store, store_new_connections
from tests.support import free_port, threads_of
from tests.webhook_client import connection_success, envelope

WAITING_EXPORTS = 40


def _settings(db: Database, tmp_path: Path, **extra: Any) -> Settings:
    """The runtime's settings on ``db``; Fasten's API is a loopback port nothing listens on."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=db.url,
        data_dir=str(tmp_path / "data"),
        fasten_api_url=f"http://127.0.0.1:{free_port()}/v1",
        **extra,
    )


def _started(db: Database) -> int:
    with db.read_session() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(OutboxItem)
                .where(OutboxItem.started_at.is_not(None))
            )
            or 0
        )


def test_workflows_waiting_for_a_slot_hold_no_thread(db: Database, tmp_path: Path) -> None:
    """Forty export requests wait for Fasten's pace (one request per 100 s): they wait as
    coroutines on the workflow loop, not as forty blocked threads."""
    settings = _settings(
        db,
        tmp_path,
        test_public_id="public_test_rt",
        test_private_key="private_test_rt",
        fasten_requests_per_second=0.01,
        executor_id="runtime-test",
    )
    with db.session() as session:
        for n in range(WAITING_EXPORTS):
            connection = connections_repo.create(
                session, f"org-rt-{n}", api_mode="test", status="authorized"
            )
            exports_repo.create(session, connection.id, trigger="manual")
    threads_before = threading.active_count()
    runtime = Runtime(settings, db)
    runtime.start()
    try:
        deadline = time.monotonic() + 60
        while _started(db) < WAITING_EXPORTS and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _started(db) == WAITING_EXPORTS
        time.sleep(1.0)  # let every started workflow reach its wait
        assert threading.active_count() - threads_before < WAITING_EXPORTS // 2
    finally:
        runtime.stop()


def test_every_durable_function_has_its_own_name() -> None:
    """DBOS finds workflows and steps by name: two with one name (the sources' steps once
    copied the exports' names) make it warn, and a recovery could run the wrong one."""
    result = subprocess.run(
        [sys.executable, "-c", "import ehi_bridge.runtime"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Duplicate registration" not in result.stderr + result.stdout


def _nice_of_threads_named(name: str) -> list[int]:
    return [nice for _, thread, nice in threads_of(os.getpid()) if thread == name]


def test_the_applier_keeps_its_priority_only_where_it_holds_the_write_gate(
    db: Database, tmp_path: Path
) -> None:
    """Started niced (as serve's child starts it), the runtime lowers every thread's
    priority but the applier's on SQLite, where it holds the write gate; on PostgreSQL the
    applier is niced too. Started from a thread of its own: niceness is per thread."""
    settings = _settings(db, tmp_path, executor_id="nice-test")
    runtime = Runtime(settings, db, niceness=3)
    starter_nice: list[int] = []

    def start() -> None:
        runtime.start()
        starter_nice.append(os.nice(0))

    starter = threading.Thread(target=start)
    starter.start()
    starter.join(60)
    try:
        deadline = time.monotonic() + 10
        while not _nice_of_threads_named(APPLIER_THREAD_NAME) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert starter_nice == [3]  # everything started after it inherits this
        assert _nice_of_threads_named(APPLIER_THREAD_NAME) == [0 if db.is_sqlite else 3]
        assert os.nice(0) == 0  # this thread (pytest's) is untouched
    finally:
        runtime.stop()


def test_the_applier_pauses_for_a_busy_receiver_on_both_databases(
    db: Database, tmp_path: Path
) -> None:
    """While deliveries arrive fast, a full batch leaves the applier a pause before its next
    write, on SQLite (its write lock) and on PostgreSQL (the CPU); none while they don't."""
    settings = _settings(db, tmp_path, apply_batch_size=16)
    runtime = Runtime(settings, db)
    store_new_connections(db, "quiet", 64)
    assert runtime.apply_once()  # a first look at the inbox: nothing to compare with
    assert runtime.apply_once()  # no new deliveries since
    assert runtime.next_write_at == 0.0
    # A thousand deliveries since the last look, within seconds.
    store_new_connections(db, "burst", 1000)
    before = time.perf_counter()
    assert runtime.apply_once()
    assert runtime.next_write_at > before


FAILING_DOWNLOADS = 300


def _attempted(db: Database) -> int:
    with db.read_session() as session:
        return session.scalar(select(func.count()).where(Export.attempts > 0)) or 0


def test_a_burst_of_failing_downloads_runs_on_a_bounded_set_of_threads(
    db: Database, tmp_path: Path
) -> None:
    """Three hundred exports whose downloads all fail at once (no Fasten credentials): every
    event is applied and every download attempted, on a bounded number of threads. DBOS's
    own pool for blocking calls is unbounded: it started a thread per failing download, all
    queued on 16 database connections. And on SQLite the launcher holds no write lock while
    the workflows start: with the threads bounded, starts that waited for a thread, whose
    calls waited for the launcher's lock, never finished."""
    # No credentials: every download fails before any request.
    settings = _settings(db, tmp_path, auto_request_export=False, executor_id="burst-test")
    events = []
    for n in range(FAILING_DOWNLOADS):
        org = f"org-burst-{n}"
        events.append(envelope("patient.connection_success", connection_success(org)))
        download = {"url": "https://files.example/export.jsonl", "export_type": "jsonl"}
        data = {"org_connection_id": org, "task_id": f"task-{n}", "download_links": [download]}
        events.append(envelope("patient.ehi_export_success", data))
    store(db, events)
    threads_before = threading.active_count()
    runtime = Runtime(settings, db)
    runtime.start()
    peak = 0
    try:
        deadline = time.monotonic() + 120
        while _attempted(db) < FAILING_DOWNLOADS and time.monotonic() < deadline:
            peak = max(peak, threading.active_count())
            time.sleep(0.02)
        assert _attempted(db) == FAILING_DOWNLOADS
    finally:
        runtime.stop()
    with db.read_session() as session:
        statuses = set(session.scalars(select(InboxEvent.status)))
    assert statuses == {"applied"}
    # The runtime's own threads (applier, launcher, loops, DBOS's) and the bounded pool.
    assert peak - threads_before <= executor_threads(settings) + 16
