"""The background runtime: the inbox applier, the outbox launcher and the sweep.

Roles: ``serve`` runs it in a child process (``background/child.py``), ``worker`` runs it
alone (scale-out on PostgreSQL). Every process needs a stable, unique ``EHI_EXECUTOR_ID``
so DBOS recovers exactly its own unfinished workflows after a crash; the executor lock
refuses a second live process with the same id.

Three threads, none of which sleeps while holding anything:
- the applier claims due inbox rows and applies a batch per transaction
  (``webhooks.service.apply_batch``); follow-up work lands in the outbox in that
  transaction;
- the launcher starts the outbox's workflows (DBOS, under the row's workflow id, so a
  crash between start and stamp starts nothing twice) and runs the sweep every few
  seconds (deadlines due, stalled exports);
- the workflow loop (an asyncio loop of our own, adopted by DBOS as its main loop) runs
  every export workflow as a coroutine. They are started there with
  ``start_workflow_async``: DBOS's synchronous ``start_workflow`` would hold a thread per
  workflow until it ends, a thousand threads while a thousand exports wait for a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from dbos import DBOS, DBOSConfig, SetWorkflowID
from sqlalchemy import create_engine, event

from ehi_bridge import __version__
from ehi_bridge.background.context import BackgroundContext, install
from ehi_bridge.background.executor_lock import ExecutorLock
from ehi_bridge.background.limits import (
    BatchSteering,
    StageLimits,
    apply_share,
    receiving_fast,
    yield_to_receiver,
)
from ehi_bridge.config import Settings
from ehi_bridge.connections.tasks import verify_connection_workflow
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database, is_sqlite, normalize_url
from ehi_bridge.exports import service as exports_service
from ehi_bridge.exports.tasks import (
    cancel_export_workflow,
    export_deadline_workflow,
    ingest_export_workflow,
    request_export_workflow,
)
from ehi_bridge.outbox import repository as outbox_repo
from ehi_bridge.outbox.models import OutboxKind
from ehi_bridge.records.parser_process import keep_parser_ready, stop_ready_parser
from ehi_bridge.sources import service as sources_service
from ehi_bridge.sources.definitions import use_user_definitions
from ehi_bridge.sources.fetch import HostLimiter
from ehi_bridge.sources.tasks import sync_source_workflow
from ehi_bridge.webhooks import repository as inbox_repo
from ehi_bridge.webhooks.service import apply_batch

log = structlog.get_logger(__name__)

LAUNCH_BATCH = 200
# Threads for the workflows' short blocking calls, beside those the ingests hold.
EXECUTOR_THREADS_BESIDE_INGESTS = 6
IDLE_POLL_SECONDS = 0.05
APPLIER_THREAD_NAME = "ehi-applier"  # as ``top -H`` and /proc/<pid>/task/*/comm show it
PR_SET_NAME = 15


def _name_os_thread(name: str) -> None:
    """Name the calling thread for the OS (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_NAME, name.encode()[:15])


WORKFLOWS: dict[str, tuple[Callable[[Any], Coroutine[Any, Any, str]], Callable[[str], Any]]] = {
    OutboxKind.REQUEST_EXPORT: (request_export_workflow, int),
    OutboxKind.INGEST_EXPORT: (ingest_export_workflow, int),
    OutboxKind.EXPORT_DEADLINE: (export_deadline_workflow, int),
    OutboxKind.CANCEL_EXPORT: (cancel_export_workflow, int),
    OutboxKind.VERIFY_CONNECTION: (verify_connection_workflow, str),
    OutboxKind.SYNC_SOURCE: (sync_source_workflow, int),
}


@dataclass
class Runtime:
    settings: Settings
    db: Database
    heartbeat: float = field(default_factory=time.monotonic)
    _wake_applier: threading.Event = field(default_factory=threading.Event)
    _wake_launcher: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    lock_held_by_caller: bool = False
    # Niceness of the runtime's threads (``serve``'s child: the receiver comes first), but on
    # SQLite not the applier's: it holds the write gate, and a holder that the scheduler puts
    # behind other threads keeps the receiver waiting longer.
    niceness: int = 0
    _steering: BatchSteering | None = None  # the applier's batch size (SQLite steers it)
    # The newest inbox row the applier has seen, and when: how fast deliveries arrive.
    _newest_seen: tuple[int, float] = (0, 0.0)
    # When the applier may write again while the receiver is busy (time.perf_counter()).
    _write_turn_at: float = 0.0
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: ExecutorLock | None = None
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def wake(self) -> None:
        """New inbox rows may be waiting (the applier also polls)."""
        self._wake_applier.set()

    def seconds_since_heartbeat(self) -> float:
        return time.monotonic() - self.heartbeat

    @property
    def next_write_at(self) -> float:
        """``time.perf_counter()`` before which the applier does not start its next write:
        the pause it owes a busy receiver (0: none)."""
        return self._write_turn_at

    def start(self) -> None:
        if not self.lock_held_by_caller:
            self._lock = ExecutorLock(
                self.settings.resolved_database_url, self.settings.executor_id
            )
            self._lock.acquire()
        limits = StageLimits.from_settings(self.settings)
        use_user_definitions(self.settings.sources_definitions_file)
        hosts = HostLimiter(self.settings.source_max_in_flight_per_host)
        install(BackgroundContext(self.settings, self.db, limits, source_hosts=hosts))
        # Linux keeps a nice value per thread: this one's, inherited by every thread and
        # process started after it (DBOS's included). On SQLite the applier is started first,
        # at the normal priority; on PostgreSQL it holds no gate and is niced like the rest.
        if not self.db.is_sqlite:
            self._lower_priority()
        self._start_thread("applier", self._apply_loop)
        self._lower_priority()
        loop_thread = threading.Thread(target=self._loop.run_forever, name="workflows", daemon=True)
        loop_thread.start()
        self._in_loop(_launch_on_running_loop(self.settings))
        keep_parser_ready()
        self._start_thread("launcher", self._launch_loop)
        log.info("background runtime started", executor_id=self.settings.executor_id)

    def _lower_priority(self) -> None:
        if self.niceness and os.nice(0) < self.niceness:
            os.nice(self.niceness - os.nice(0))

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake_applier.set()
        self._wake_launcher.set()
        for thread in self._threads:
            thread.join(timeout=10)
        DBOS.destroy(workflow_completion_timeout_sec=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        stop_ready_parser()
        install(None)
        if self._lock is not None:
            self._lock.release()

    # --- applier ---------------------------------------------------------------------------

    def _apply_loop(self) -> None:
        _name_os_thread(APPLIER_THREAD_NAME)
        full = False
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                # After a full batch more is waiting: no need to look first.
                full = self.apply_once() if full or self._anything_due() else False
            except Exception as exc:  # the rows stay due; try again shortly
                log.error("apply failed", error_type=type(exc).__name__)
                full = False
                self._stop.wait(1.0)
                continue
            if not full:
                self._wake_applier.wait(IDLE_POLL_SECONDS)
                self._wake_applier.clear()

    def _anything_due(self) -> bool:
        with self.db.read_session() as session:
            return inbox_repo.any_due(session, utcnow())

    def apply_once(self) -> bool:
        """Apply one batch; whether it was full (more may be waiting)."""
        maximum = self.settings.apply_batch_size
        limit = self._steering.size if self._steering else maximum
        result = apply_batch(self.db, self.settings, limit=limit, before_write=self._wait_turn)
        busy = result.transaction_seconds
        if self.db.is_sqlite:
            steering = self._steering or BatchSteering(maximum)
            self._steering = steering.after(busy, result.claimed, maximum)
        if result.follow_ups:
            self._wake_launcher.set()
        full = result.claimed >= limit
        self._write_turn_at = 0.0
        if full and result.write_ended_at and self._receiver_busy():
            share = apply_share(self.settings.apply_share_while_receiving, self.db.is_sqlite)
            self._write_turn_at = result.write_ended_at + yield_to_receiver(busy, share)
        return full

    def _wait_turn(self) -> None:
        """Right before the write transaction: the rest of the pause owed to a busy receiver.
        What the applier did since its last one (SQLite's sync, reading and parsing the next
        batch) counts towards the pause, so it writes ``share`` of the time, not less."""
        self._stop.wait(max(0.0, self._write_turn_at - time.perf_counter()))

    def _receiver_busy(self) -> bool:
        with self.db.read_session() as session:
            newest = inbox_repo.newest_id(session) or 0
        now = time.monotonic()
        seen, seen_at = self._newest_seen
        self._newest_seen = (newest, now)
        return receiving_fast(newest - seen, now - seen_at)

    # --- launcher and sweep ----------------------------------------------------------------

    def _launch_loop(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                while self.launch_once() == LAUNCH_BATCH and not self._stop.is_set():
                    pass
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.sweep_interval_seconds
                    now = utcnow()
                    resyncs = sources_service.sweep_resyncs(self.db, self.settings, now)
                    if exports_service.sweep(self.db, self.settings, now).deadlines or resyncs:
                        continue  # launch the deadline checks and syncs now
            except Exception as exc:  # the outbox rows stay; try again shortly
                log.error("launch failed", error_type=type(exc).__name__)
                self._stop.wait(1.0)
                continue
            self._wake_launcher.wait(1.0)
            self._wake_launcher.clear()

    def launch_once(self) -> int:
        """Start the workflows of up to a batch of outbox rows; how many rows there were.

        A workflow id is started once however often it is asked for, so a crash before the
        rows are marked only starts them again. On PostgreSQL the rows stay locked while
        their workflows start, so launchers in other processes take others. On SQLite no
        write transaction is held meanwhile: it would exclude every other writer, the
        starting workflows' own steps included, for as long as the starts take (with a
        thousand failing downloads the applier fell to ~46 events/s behind it)."""
        if self.db.is_sqlite:
            with self.db.read_session() as session:
                items = outbox_repo.claim_not_started(session, LAUNCH_BATCH)
            if items:
                self._in_loop(_start_workflows(items))
                with self.db.session() as session:
                    outbox_repo.mark_started(session, [i.workflow_id for i in items], utcnow())
            return len(items)
        with self.db.session() as session:
            items = outbox_repo.claim_not_started(session, LAUNCH_BATCH)
            if items:
                self._in_loop(_start_workflows(items))
            outbox_repo.mark_started(session, [i.workflow_id for i in items], utcnow())
        return len(items)

    def _in_loop(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


async def _start_workflows(items: list[outbox_repo.FollowUp]) -> None:
    for item in items:
        workflow, subject = WORKFLOWS[item.kind]
        with SetWorkflowID(item.workflow_id):
            await DBOS.start_workflow_async(workflow, subject(item.subject))


async def _launch_on_running_loop(settings: Settings) -> None:
    """DBOS adopts the loop it is launched on: workflows it recovers run there too."""
    _launch_dbos(settings)


def _sqlite_system_engine(url: str) -> Any:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def executor_threads(settings: Settings) -> int:
    """Threads for the workflows' blocking calls (``asyncio.to_thread``: database work, the
    ingests). DBOS's default is unbounded: a thousand failing downloads started a thousand
    threads at once, all queued on a pool of 16 database connections. Bounded, the calls
    queue for a thread instead."""
    return settings.ingest_concurrency + EXECUTOR_THREADS_BESIDE_INGESTS


def _launch_dbos(settings: Settings) -> None:
    url = normalize_url(settings.resolved_dbos_database_url)
    config: DBOSConfig = {
        "name": "ehi-bridge",
        "system_database_url": url,
        "application_version": settings.app_version or __version__,
        "executor_id": settings.executor_id,
        "log_level": "WARNING",
        "notification_listener_polling_interval_sec": 0.1,
        "max_executor_threads": executor_threads(settings),
    }
    if is_sqlite(url):
        config["system_database_engine"] = _sqlite_system_engine(url)
    DBOS(config=config)
    DBOS.launch()
