"""Durable export work (DBOS workflows): request → deadline watch; download → ingest → notify.

Workflow ids are deterministic (``export-{id}``, ``ingest-{id}-{success event}``) so starting
one twice is a no-op. Steps are at-least-once; every step is safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from dbos import DBOS, SetWorkflowID

from ehi_bridge import runtime
from ehi_bridge.config import Mode
from ehi_bridge.exports import service

log = structlog.get_logger(__name__)

REQUEST_ATTEMPTS = 5
DOWNLOAD_ATTEMPTS = 8
BACKOFF_SECONDS = 2.0


def raise_alert_now(kind: str, dedup_key: str, message: str, context: dict[str, Any]) -> None:
    """Record and send an alert; never raises into the caller."""
    from ehi_bridge.alerts.service import raise_alert

    rt = runtime.current()
    try:
        raise_alert(
            rt.db, rt.settings, kind=kind, dedup_key=dedup_key, message=message, context=context
        )
    except Exception as exc:
        log.error("alert could not be raised", kind=kind, error_type=type(exc).__name__)


@DBOS.step()
def _alert_step(kind: str, dedup_key: str, message: str, context: dict[str, Any]) -> None:
    raise_alert_now(kind, dedup_key, message, context)


@DBOS.step()
def _cancel_step(export_id: int) -> None:
    with contextlib.suppress(Exception):
        DBOS.cancel_workflow(f"export-{export_id}")
    with contextlib.suppress(Exception):
        for status in DBOS.list_workflows(workflow_id_prefix=f"ingest-{export_id}-"):
            DBOS.cancel_workflow(status.workflow_id)


def start_export(export_id: int) -> None:
    with SetWorkflowID(f"export-{export_id}"):
        DBOS.enqueue_workflow(runtime.EXPORTS_QUEUE, run_export_workflow, export_id)


def start_ingest(export_id: int, key: str) -> None:
    with SetWorkflowID(f"ingest-{export_id}-{key}"):
        DBOS.enqueue_workflow(runtime.EXPORTS_QUEUE, ingest_export_workflow, export_id)


def launch_follow_ups(follow: dict[str, Any]) -> None:
    """Start what an applied event asked for (called inside a workflow: durable)."""
    for export_id in follow["run_exports"]:
        start_export(export_id)
    for export_id in follow["ingest_exports"]:
        start_ingest(export_id, "webhook")
    for export_id in follow["cancelled_exports"]:
        _cancel_step(export_id)
    for connection_id in follow["verify_connections"]:
        new_export = _verify_connection_step(connection_id)
        if new_export is not None:
            start_export(new_export)
    for alert in follow["alerts"]:
        _alert_step(alert["kind"], alert["dedup_key"], alert["message"], alert["context"])


@DBOS.step()
def _verify_connection_step(connection_id: str) -> int | None:
    """A success arrived for a revoked connection: ask Fasten whether it is a reconnect."""
    from ehi_bridge.connections import repository as connections_repo
    from ehi_bridge.fasten.client import client_for_mode
    from ehi_bridge.webhooks.service import reauthorize_if_confirmed

    rt = runtime.current()
    with rt.db.read_session() as session:
        connection = connections_repo.get(session, connection_id)
        if connection is None or not connection.org_connection_id:
            return None
        org_connection_id = connection.org_connection_id
        mode: Mode = "live" if connection.api_mode == "live" else "test"

    async def ask() -> str | None:
        async with client_for_mode(rt.settings, mode) as client:
            return (await client.org_connection(org_connection_id)).status

    try:
        status = asyncio.run(ask())
    except Exception as exc:
        log.warning("connection check failed", error_type=type(exc).__name__)
        return None
    return reauthorize_if_confirmed(rt.db, rt.settings, connection_id, status)


# --- request and deadline ---------------------------------------------------------------


@DBOS.step()
def _request_step(export_id: int) -> dict[str, Any]:
    """Ask Fasten for the export; returns seconds to the deadline, or why not."""
    from ehi_bridge.fasten.client import client_for_mode

    rt = runtime.current()
    target = service.request_target(rt.db, export_id)
    if target is None:
        return {"outcome": "skip"}

    async def call() -> str:
        async with client_for_mode(rt.settings, target.mode) as client:
            task = await client.create_export(target.org_connection_id)
            return task.task_id

    try:
        task_id = asyncio.run(call())
    except Exception as exc:
        return {"outcome": "error", "error": type(exc).__name__}
    return {"outcome": "ok", "wait": service.record_task(rt.db, rt.settings, target, task_id)}


@DBOS.step()
def _request_failed_step(export_id: int, error: str) -> None:
    rt = runtime.current()
    service.request_failed(rt.db, rt.settings, export_id, error)


@DBOS.step()
def _deadline_step(export_id: int) -> None:
    from ehi_bridge.fasten.client import client_for_mode

    rt = runtime.current()
    waiting = service.deadline_task(rt.db, export_id)
    if waiting is None:
        return
    task_id, mode = waiting
    remote: str | None = None
    if task_id:

        async def poll() -> str:
            async with client_for_mode(rt.settings, mode) as client:
                return (await client.export_status(task_id)).status

        try:
            remote = asyncio.run(poll())
        except Exception as exc:
            log.warning("status poll failed", export_id=export_id, error_type=type(exc).__name__)
    service.deadline_passed(rt.db, rt.settings, export_id, remote)


@DBOS.workflow()
def run_export_workflow(export_id: int) -> str:
    for attempt in range(1, REQUEST_ATTEMPTS + 1):
        result = _request_step(export_id)
        if result["outcome"] == "skip":
            return "skipped"
        if result["outcome"] == "ok":
            DBOS.sleep(float(result["wait"]))
            _deadline_step(export_id)
            return "watched"
        if attempt == REQUEST_ATTEMPTS:
            _request_failed_step(export_id, str(result["error"]))
            return "failed"
        DBOS.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
    return "failed"


# --- download and ingest ----------------------------------------------------------------


@DBOS.step()
def _download_step(export_id: int) -> dict[str, Any]:
    from ehi_bridge.fasten.client import client_for_mode
    from ehi_bridge.fasten.errors import DownloadRefused, ExportFileGone

    rt = runtime.current()
    target = service.download_target(rt.db, export_id)
    if target is None:
        return {"outcome": "skip"}
    dest = service.download_path(rt.settings, export_id)

    async def fetch() -> int:
        async with client_for_mode(rt.settings, target.mode) as client:
            result = await client.download(target.url, dest)
            return int(result.bytes)

    try:
        size = asyncio.run(fetch())
    except DownloadRefused as exc:
        service.download_refused(rt.db, rt.settings, export_id, getattr(exc, "host", "?"))
        return {"outcome": "refused"}
    except ExportFileGone:
        return {"outcome": "gone"}
    except Exception as exc:
        service.record_download_attempt(rt.db, export_id, type(exc).__name__)
        return {"outcome": "error", "error": type(exc).__name__}
    service.record_download(rt.db, export_id, size)
    return {"outcome": "ok", "bytes": size}


@DBOS.step()
def _download_failed_step(export_id: int, error: str) -> None:
    rt = runtime.current()
    service.download_failed(rt.db, rt.settings, export_id, error)


@DBOS.step()
def _expired_step(export_id: int) -> int | None:
    rt = runtime.current()
    service.file_gone(rt.db, rt.settings, export_id)
    return service.rerequest_after_expiry(rt.db, rt.settings, export_id)


@DBOS.step()
def _ingest_step(export_id: int) -> str:
    from ehi_bridge.records.ingest import ingest_file

    rt = runtime.current()
    inputs = service.ingest_inputs(rt.db, export_id)
    if inputs is None:
        return "skip"
    connection_id, expected_total, expected_by_type = inputs
    path = service.download_path(rt.settings, export_id)
    report = ingest_file(
        rt.db,
        path,
        connection_id=connection_id,
        export_id=export_id,
        expected_total=expected_total,
        expected_by_type=expected_by_type,
        quarantine_bytes=rt.settings.quarantine_max_bytes,
    )
    service.record_ingest(rt.db, rt.settings, export_id, report.as_dict(), report.complete)
    path.unlink(missing_ok=True)
    return "complete" if report.complete else "partial"


@DBOS.step()
def _notify_step(export_id: int) -> None:
    from ehi_bridge.notify.service import notify_records_ingested

    rt = runtime.current()
    if rt.settings.downstream_url:
        notify_records_ingested(rt.db, rt.settings, export_id)


@DBOS.step()
def _is_ingesting_step(export_id: int) -> bool:
    return service.ingest_inputs(runtime.current().db, export_id) is not None


@DBOS.workflow()
def ingest_export_workflow(export_id: int) -> str:
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        result = _download_step(export_id)
        outcome = result["outcome"]
        if outcome == "ok":
            break
        if outcome == "gone":
            new_export = _expired_step(export_id)
            if new_export is not None:
                start_export(new_export)
            return "expired"
        if outcome in ("skip", "refused"):
            if outcome == "skip" and _is_ingesting_step(export_id):
                break  # the download finished before a crash; ingest what is on disk
            return str(outcome)
        if attempt == DOWNLOAD_ATTEMPTS:
            _download_failed_step(export_id, str(result.get("error")))
            return "download_failed"
        DBOS.sleep(min(600.0, BACKOFF_SECONDS * 2 ** (attempt - 1)))
    outcome = _ingest_step(export_id)
    if outcome != "skip":
        _notify_step(export_id)
    return outcome
