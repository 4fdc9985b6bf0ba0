"""Durable connection work: a success that arrived after a revocation is checked with Fasten."""

from __future__ import annotations

import asyncio

import structlog
from dbos import DBOS

from ehi_bridge.background.context import current
from ehi_bridge.config import Mode
from ehi_bridge.connections import repository as connections_repo
from ehi_bridge.webhooks.service import reauthorize_if_confirmed

log = structlog.get_logger(__name__)


def _target(connection_id: str) -> tuple[str, Mode] | None:
    with current().db.read_session() as session:
        connection = connections_repo.get(session, connection_id)
        if connection is None or not connection.org_connection_id:
            return None
        return connection.org_connection_id, "live" if connection.api_mode == "live" else "test"


@DBOS.step()
async def _verify_step(connection_id: str) -> int | None:
    """Ask Fasten whether the connection is authorized again; apply a confirmed answer."""
    ctx = current()
    target = await asyncio.to_thread(_target, connection_id)
    if target is None:
        return None
    org_connection_id, mode = target
    try:
        client = ctx.fasten(mode)
        async with ctx.limits.fasten_request():
            status = (await client.org_connection(org_connection_id)).status
    except Exception as exc:
        log.warning("connection check failed", error_type=type(exc).__name__)
        return None
    return await asyncio.to_thread(
        reauthorize_if_confirmed, ctx.db, ctx.settings, connection_id, status
    )


@DBOS.workflow()
async def verify_connection_workflow(connection_id: str) -> str:
    new_export = await _verify_step(connection_id)
    return "reauthorized" if new_export is not None else "unchanged"
