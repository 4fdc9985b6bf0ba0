"""The background runtime: DBOS Transact for durable work, plus the inbox dispatcher.

Roles: ``serve`` runs the web receiver and the runtime in one process; ``worker`` runs the
runtime alone (scale-out on PostgreSQL). Every process needs a stable, unique
``EHI_EXECUTOR_ID`` so DBOS recovers exactly its own unfinished workflows after a crash,
and all processes of one release share the pinned application version.

The dispatcher moves committed inbox rows into DBOS: for each ``received`` row it enqueues
``apply_event_workflow`` under the workflow id ``apply-{row}-{replays}``; DBOS ignores a
second enqueue of the same id, so two dispatchers (two processes) cannot double-apply.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import create_engine, event

from ehi_bridge import __version__
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database, is_sqlite, normalize_url
from ehi_bridge.records.ingest import keep_parser_ready, stop_ready_parser
from ehi_bridge.webhooks import repository as inbox_repo

log = structlog.get_logger(__name__)

EVENTS_QUEUE = "ehi-events"
EXPORTS_QUEUE = "ehi-exports"
DISPATCH_BATCH = 200


@dataclass
class Runtime:
    settings: Settings
    db: Database
    heartbeat: float = field(default_factory=time.monotonic)
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def wake(self) -> None:
        """Called after an inbox commit: there may be new rows to dispatch."""
        self._wake.set()

    def seconds_since_heartbeat(self) -> float:
        return time.monotonic() - self.heartbeat

    def start(self) -> None:
        global _current
        _current = self
        _launch_dbos(self.settings)
        keep_parser_ready()
        self._thread = threading.Thread(target=self._dispatch_loop, name="dispatcher", daemon=True)
        self._thread.start()
        log.info("background runtime started", executor_id=self.settings.executor_id)

    def stop(self) -> None:
        global _current
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        from dbos import DBOS

        DBOS.destroy(workflow_completion_timeout_sec=5)
        stop_ready_parser()
        _current = None

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            self.heartbeat = time.monotonic()
            try:
                while self.dispatch_once() == DISPATCH_BATCH and not self._stop.is_set():
                    pass
                self.dispatch_requested_exports()
            except Exception as exc:  # keep dispatching; the rows stay 'received'
                log.error("dispatch failed", error_type=type(exc).__name__)
                self._stop.wait(1.0)

    def dispatch_once(self) -> int:
        from dbos import DBOS, SetWorkflowID

        from ehi_bridge.webhooks.tasks import apply_event_workflow

        with self.db.read_session() as session:
            rows = inbox_repo.received_batch(session, DISPATCH_BATCH)
        if not rows:
            return 0
        for inbox_id, replays in rows:
            with SetWorkflowID(f"apply-{inbox_id}-{replays}"):
                DBOS.enqueue_workflow(EVENTS_QUEUE, apply_event_workflow, inbox_id)
        with self.db.session() as session:
            inbox_repo.mark_queued(session, [inbox_id for inbox_id, _ in rows])
        return len(rows)

    def dispatch_requested_exports(self) -> int:
        """Exports asked for by the API or CLI (any process) get their workflow here."""
        from ehi_bridge.exports import repository as exports_repo
        from ehi_bridge.exports.tasks import start_export

        with self.db.read_session() as session:
            ids = exports_repo.requested_ids(session, DISPATCH_BATCH)
        for export_id in ids:
            start_export(export_id)
        return len(ids)


_current: Runtime | None = None


def current() -> Runtime:
    """The runtime of this process (DBOS workflows are module functions and find it here)."""
    if _current is None:
        raise RuntimeError("the background runtime is not running in this process")
    return _current


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


def _launch_dbos(settings: Settings) -> None:
    from dbos import DBOS, DBOSConfig

    # Workflows must be registered before launch.
    from ehi_bridge.exports import tasks as _exports_tasks  # noqa: F401
    from ehi_bridge.webhooks import tasks as _webhook_tasks  # noqa: F401

    url = normalize_url(settings.resolved_dbos_database_url)
    config: DBOSConfig = {
        "name": "ehi-bridge",
        "system_database_url": url,
        "application_version": settings.app_version or __version__,
        "executor_id": settings.executor_id,
        "log_level": "WARNING",
        "notification_listener_polling_interval_sec": 0.1,
    }
    if is_sqlite(url):
        config["system_database_engine"] = _sqlite_system_engine(url)
    DBOS(config=config)
    DBOS.launch()
    DBOS.register_queue(EVENTS_QUEUE, worker_concurrency=4, polling_interval_sec=0.1)
    DBOS.register_queue(EXPORTS_QUEUE, worker_concurrency=4, polling_interval_sec=0.5)
