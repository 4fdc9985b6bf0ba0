"""Durable export work (DBOS async workflows): request; deadline check; download → ingest → notify.

Each workflow is started from an outbox row under that row's id (``export-{id}``,
``deadline-{id}``, ``ingest-{id}-{key}``, ``cancel-{id}``), so starting one twice is a
no-op. Workflows are coroutines: a backoff (``DBOS.sleep_async``) holds no thread and no
slot; only the step doing the I/O holds its stage's slot (``background/limits.py``).
Nothing waits for a deadline: the sweep (``exports.service.sweep``) writes the deadline
check's outbox row once the deadline has passed. Steps are at-least-once and each is safe
to repeat. Database calls run in threads so the event loop never waits on a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from dbos import DBOS

from ehi_bridge.background.context import current
from ehi_bridge.exports import service
from ehi_bridge.fasten.errors import DownloadRefused, ExportFileGone
from ehi_bridge.notify.service import notify_records_ingested
from ehi_bridge.records.ingest import ingest_file

log = structlog.get_logger(__name__)

REQUEST_ATTEMPTS = 5
DOWNLOAD_ATTEMPTS = 8
BACKOFF_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 600.0


def _backoff(attempt: int) -> float:
    return float(min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2 ** (attempt - 1)))


# --- request ----------------------------------------------------------------------------


@DBOS.step()
async def _request_step(export_id: int) -> dict[str, Any]:
    """Ask Fasten for the export and record its task and deadline, or say why not."""
    ctx = current()
    target = await asyncio.to_thread(service.request_target, ctx.db, export_id)
    if target is None:
        return {"outcome": "skip"}
    try:
        client = ctx.fasten(target.mode)
        async with ctx.limits.fasten_request():
            task = await client.create_export(target.org_connection_id)
    except Exception as exc:
        return {"outcome": "error", "error": type(exc).__name__}
    await asyncio.to_thread(service.record_task, ctx.db, ctx.settings, target, task.task_id)
    return {"outcome": "ok"}


@DBOS.step()
async def _request_failed_step(export_id: int, error: str) -> None:
    ctx = current()
    await asyncio.to_thread(service.request_failed, ctx.db, ctx.settings, export_id, error)


@DBOS.workflow()
async def request_export_workflow(export_id: int) -> str:
    for attempt in range(1, REQUEST_ATTEMPTS + 1):
        result = await _request_step(export_id)
        if result["outcome"] == "skip":
            return "skipped"
        if result["outcome"] == "ok":
            return "requested"
        if attempt == REQUEST_ATTEMPTS:
            await _request_failed_step(export_id, str(result["error"]))
            return "failed"
        await DBOS.sleep_async(_backoff(attempt))
    return "failed"


# --- the deadline -----------------------------------------------------------------------


@DBOS.step()
async def _deadline_step(export_id: int) -> None:
    """Still no webhook at the deadline: ask Fasten for the task's status, then decide."""
    ctx = current()
    waiting = await asyncio.to_thread(service.deadline_task, ctx.db, export_id)
    if waiting is None:
        return
    task_id, mode = waiting
    remote: str | None = None
    if task_id:
        try:
            client = ctx.fasten(mode)
            async with ctx.limits.fasten_request():
                remote = (await client.export_status(task_id)).status
        except Exception as exc:
            log.warning("status poll failed", export_id=export_id, error_type=type(exc).__name__)
    await asyncio.to_thread(service.deadline_passed, ctx.db, ctx.settings, export_id, remote)


@DBOS.workflow()
async def export_deadline_workflow(export_id: int) -> str:
    await _deadline_step(export_id)
    return "checked"


# --- cancel -----------------------------------------------------------------------------


@DBOS.step()
async def _cancel_step(export_id: int) -> None:
    with contextlib.suppress(Exception):
        await DBOS.cancel_workflow_async(f"export-{export_id}")
    with contextlib.suppress(Exception):
        for status in await DBOS.list_workflows_async(workflow_id_prefix=f"ingest-{export_id}-"):
            await DBOS.cancel_workflow_async(status.workflow_id)


@DBOS.workflow()
async def cancel_export_workflow(export_id: int) -> str:
    await _cancel_step(export_id)
    return "cancelled"


# --- download and ingest ----------------------------------------------------------------


@DBOS.step()
async def _download_step(export_id: int) -> dict[str, Any]:
    ctx = current()
    target = await asyncio.to_thread(service.download_target, ctx.db, export_id)
    if target is None:
        return {"outcome": "skip"}
    dest = service.download_path(ctx.settings, export_id)
    try:
        client = ctx.fasten(target.mode)
        async with ctx.limits.downloads:
            size = int((await client.download(target.url, dest)).bytes)
    except DownloadRefused as exc:
        host = getattr(exc, "host", "?")
        await asyncio.to_thread(service.download_refused, ctx.db, ctx.settings, export_id, host)
        return {"outcome": "refused"}
    except ExportFileGone:
        return {"outcome": "gone"}
    except Exception as exc:
        error = type(exc).__name__
        await asyncio.to_thread(service.record_download_attempt, ctx.db, export_id, error)
        return {"outcome": "error", "error": error}
    await asyncio.to_thread(service.record_download, ctx.db, export_id, size)
    return {"outcome": "ok", "bytes": size}


@DBOS.step()
async def _download_failed_step(export_id: int, error: str) -> None:
    ctx = current()
    await asyncio.to_thread(service.download_failed, ctx.db, ctx.settings, export_id, error)


@DBOS.step()
async def _expired_step(export_id: int) -> None:
    """The file is gone: alert, and ask again (the new export's request is in the outbox)."""
    ctx = current()
    await asyncio.to_thread(service.file_gone, ctx.db, ctx.settings, export_id)
    await asyncio.to_thread(service.rerequest_after_expiry, ctx.db, ctx.settings, export_id)


def _ingest(export_id: int) -> str:
    ctx = current()
    inputs = service.ingest_inputs(ctx.db, export_id)
    if inputs is None:
        return "skip"
    connection_id, expected_total, expected_by_type = inputs
    path = service.download_path(ctx.settings, export_id)
    report = ingest_file(
        ctx.db,
        path,
        connection_id=connection_id,
        export_id=export_id,
        expected_total=expected_total,
        expected_by_type=expected_by_type,
        quarantine_bytes=ctx.settings.quarantine_max_bytes,
    )
    service.record_ingest(ctx.db, ctx.settings, export_id, report.as_dict(), report.complete)
    path.unlink(missing_ok=True)
    return "complete" if report.complete else "partial"


@DBOS.step()
async def _ingest_step(export_id: int) -> str:
    async with current().limits.ingests:
        return await asyncio.to_thread(_ingest, export_id)


@DBOS.step()
async def _notify_step(export_id: int) -> None:
    ctx = current()
    if ctx.settings.downstream_url:
        await asyncio.to_thread(notify_records_ingested, ctx.db, ctx.settings, export_id)


@DBOS.step()
async def _is_ingesting_step(export_id: int) -> bool:
    ctx = current()
    return await asyncio.to_thread(service.ingest_inputs, ctx.db, export_id) is not None


@DBOS.workflow()
async def ingest_export_workflow(export_id: int) -> str:
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        result = await _download_step(export_id)
        outcome = result["outcome"]
        if outcome == "ok":
            break
        if outcome == "gone":
            await _expired_step(export_id)
            return "expired"
        if outcome in ("skip", "refused"):
            if outcome == "skip" and await _is_ingesting_step(export_id):
                break  # the download finished before a crash; ingest what is on disk
            return str(outcome)
        if attempt == DOWNLOAD_ATTEMPTS:
            await _download_failed_step(export_id, str(result.get("error")))
            return "download_failed"
        await DBOS.sleep_async(_backoff(attempt))
    outcome = await _ingest_step(export_id)
    if outcome != "skip":
        await _notify_step(export_id)
    return outcome
