"""Durable SMART syncs (DBOS async workflow): pull → ingest → reconcile → notify.

Started from an outbox row (``sync-{export_id}``) written with the export, so starting it
twice is a no-op. After a crash the engine resumes the workflow: a pull that did not finish
runs again from the start into a fresh spool (the ingest then writes nothing it already
has: exact repeats are no-ops), and a finished pull is not repeated. Waiting (backoff,
``Retry-After``) holds no thread and no slot: ``asyncio.sleep`` inside the pull with the
host slot released, ``DBOS.sleep_async`` between attempts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from dbos import DBOS

from ehi_bridge.background.context import current
from ehi_bridge.notify.service import notify_records_ingested
from ehi_bridge.sources import service
from ehi_bridge.sources.fetch import FailureReason

log = structlog.get_logger(__name__)

PULL_ATTEMPTS = 3
BACKOFF_SECONDS = 5.0
TRANSIENT = frozenset(
    {FailureReason.SERVER_ERROR, FailureReason.NETWORK_ERROR, FailureReason.RATE_LIMITED}
)


@DBOS.step()
async def _source_pull_step(export_id: int) -> dict[str, Any]:
    # No stage slot around the pull: it waits out Retry-After inside, and a wait must hold
    # nothing. Its requests take the per-host slots (released while waiting) instead.
    ctx = current()
    return await service.pull_export(ctx.db, ctx.settings, ctx.source_hosts, export_id)


@DBOS.step()
async def _source_failed_step(export_id: int, reason: str, detail: str) -> None:
    ctx = current()
    await asyncio.to_thread(service.sync_failed, ctx.db, ctx.settings, export_id, reason, detail)


@DBOS.step()
async def _source_ingest_step(export_id: int) -> str:
    async with current().limits.ingests:
        ctx = current()
        return await asyncio.to_thread(service.ingest_export, ctx.db, ctx.settings, export_id)


@DBOS.step()
async def _source_notify_step(export_id: int) -> None:
    ctx = current()
    if ctx.settings.downstream_url:
        await asyncio.to_thread(notify_records_ingested, ctx.db, ctx.settings, export_id)


@DBOS.step()
async def _source_is_ingesting_step(export_id: int) -> bool:
    ctx = current()
    return await asyncio.to_thread(service.ingest_inputs, ctx.db, export_id) is not None


@DBOS.workflow()
async def sync_source_workflow(export_id: int) -> str:
    for attempt in range(1, PULL_ATTEMPTS + 1):
        result = await _source_pull_step(export_id)
        if result["outcome"] == "ok":
            break
        if result["outcome"] == "skip":
            if await _source_is_ingesting_step(export_id):
                break  # pulled before a crash: ingest what is on disk
            return "skipped"
        reason = str(result["reason"])
        if reason not in TRANSIENT or attempt == PULL_ATTEMPTS:
            await _source_failed_step(export_id, reason, str(result["detail"]))
            return "failed"
        await DBOS.sleep_async(BACKOFF_SECONDS * 2 ** (attempt - 1))
    outcome = await _source_ingest_step(export_id)
    if outcome != "skip":
        await _source_notify_step(export_id)
    return outcome
