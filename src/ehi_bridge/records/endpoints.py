"""``/api/connections/{id}/ingest-runs`` and ``/api/connections/{id}/quarantine``.

The quarantine holds the bytes of rejected lines, which may be PHI: reading it is audited
like reading resources.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status

from ehi_bridge.api import repository as api_repo
from ehi_bridge.api.schemas import Problem
from ehi_bridge.auth.dependencies import ApiActor, require_api_token
from ehi_bridge.auth.service import record_audit
from ehi_bridge.deps import DatabaseDep, ReadSession
from ehi_bridge.records import quarantine
from ehi_bridge.records.models import IngestError
from ehi_bridge.records.schemas import (
    IngestRunOut,
    IngestRunPage,
    QuarantineItem,
    QuarantinePage,
)

router = APIRouter(prefix="/api", tags=["api"], dependencies=[Depends(require_api_token)])

PathIdent = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")]
Kind = Literal["rejected", "conflict", "exact_repeat", "duplicate_keys"]
RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"model": Problem, "description": "Invalid cursor"},
    401: {"model": Problem, "description": "Missing or invalid API token"},
    404: {"model": Problem, "description": "Not found"},
}


def _connection(session: ReadSession, id_or_org_id: str) -> str:
    found = api_repo.find_connection(session, id_or_org_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="connection not found")
    return found.id


def _item(row: IngestError) -> QuarantineItem:
    raw = bytes(row.raw) if row.raw is not None else None
    return QuarantineItem(
        id=row.id,
        run_id=row.run_id,
        export_id=row.export_id,
        kind=row.kind,
        line_number=row.line_number,
        reason=row.reason,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        previous_line=row.previous_line,
        raw_size=row.raw_size,
        truncated=row.truncated,
        raw_base64=base64.b64encode(raw).decode() if raw is not None else None,
        reingested_at=row.reingested_at,
        created_at=row.created_at,
    )


@router.get(
    "/connections/{connection_id}/ingest-runs",
    response_model=IngestRunPage,
    responses=RESPONSES,
    summary="The latest ingest runs of a connection, newest first, with their reports",
)
def list_runs(
    session: ReadSession,
    connection_id: PathIdent,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> IngestRunPage:
    cid = _connection(session, connection_id)
    rows = quarantine.list_runs(session, cid, limit)
    return IngestRunPage(items=[IngestRunOut.model_validate(r) for r in rows])


@router.get(
    "/connections/{connection_id}/quarantine",
    response_model=QuarantinePage,
    responses=RESPONSES,
    summary="Rejected lines (with their bytes) and repeats of a connection, paged (audited)",
)
def list_quarantine(
    session: ReadSession,
    db: DatabaseDep,
    actor: ApiActor,
    request: Request,
    connection_id: PathIdent,
    kind: Annotated[Kind | None, Query()] = None,
    run_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> QuarantinePage:
    cid = _connection(session, connection_id)
    after = None
    if cursor is not None:
        try:
            after = int(api_repo.decode_cursor("q", cursor, (int,))[0])
        except api_repo.BadCursor as error:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(error)) from None
    with db.session() as audit:
        record_audit(audit, str(actor), "quarantine.list", "connection", cid, request.url.path)
    rows = quarantine.list_errors(
        session, cid, kind=kind, run_id=run_id, after_id=after, limit=limit + 1
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = api_repo.encode_cursor("q", [rows[-1].id])
    return QuarantinePage(items=[_item(r) for r in rows], next_cursor=next_cursor)
