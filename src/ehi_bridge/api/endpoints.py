"""The REST API under ``/api/``: connections, users, exports, events and FHIR resources.

Every route needs an API token (``Authorization: Bearer …``), except
``POST /api/connect/complete``, which also accepts a signed connect-link token. Reads of
patient records (resources, their export, an event's body) write an audit row first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, status
from fastapi.responses import Response, StreamingResponse

from ehi_bridge.api import repository as repo
from ehi_bridge.api.schemas import (
    ConnectionDetail,
    ConnectionOut,
    ConnectionPage,
    ConnectLinkOut,
    ConnectLinkRequest,
    EventDetail,
    EventOut,
    EventPage,
    ExportDetail,
    ExportOut,
    ExportPage,
    ExportRequest,
    Ident,
    Problem,
    ReplayRequest,
    ReplayResult,
    ResourcePage,
    TimelineEvent,
    UserDetail,
    WidgetComplete,
)
from ehi_bridge.auth.connect_links import ConnectLinkError, make_connect_link, read_connect_token
from ehi_bridge.auth.dependencies import ApiActor, OptionalApiActor, require_api_token, unauthorized
from ehi_bridge.auth.service import Actor, record_audit
from ehi_bridge.config import Mode
from ehi_bridge.connections import service as connections_service
from ehi_bridge.db.engine import Database
from ehi_bridge.deps import AppContext, CtxDep, DatabaseDep, ReadSession
from ehi_bridge.exports import service as exports_service
from ehi_bridge.records import repository as records
from ehi_bridge.webhooks.service import replay_events

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Invalid cursor or filter"},
    401: {"model": Problem, "description": "Missing or invalid API token"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "Not found"}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "Not allowed in the current state"}
}
FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"
MAX_ID = 2**63 - 1
REPLAY_CHUNK = 1000

authed = APIRouter(prefix="/api", tags=["api"], dependencies=[Depends(require_api_token)])
connect_router = APIRouter(prefix="/api", tags=["connect"])

Limit = Annotated[int, Query(ge=1, le=500, description="Page size (at most 500)")]
Cursor = Annotated[
    str | None, Query(max_length=1024, description="`next_cursor` of the previous page")
]
OptIdent = Annotated[Ident | None, Query()]
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
PathIdent = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")]
EventStatus = Literal["received", "retry", "applied", "ignored", "parked"]


def _bad_request(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=detail)


def _not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{what} not found")


def _decode(kind: str, cursor: str | None, types: Sequence[type]) -> list[Any] | None:
    if cursor is None:
        return None
    try:
        return repo.decode_cursor(kind, cursor, types)
    except repo.BadCursor as error:
        raise _bad_request(str(error)) from None


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise _bad_request(f"{name} is out of range") from None


def _audit(
    db: Database,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | None,
    request: Request,
) -> None:
    """One audit row in its own transaction, committed before the data is sent."""
    with db.session() as session:
        record_audit(session, str(actor), action, target_type, target_id, request.url.path)


def _resolve_connection(session: ReadSession, id_or_org_id: str) -> str:
    connection = repo.find_connection(session, id_or_org_id)
    if connection is None:
        raise _not_found("connection")
    return connection.id


def _connection_scope(
    session: ReadSession, connection_id: str | None, external_id: str | None
) -> tuple[list[str], str, str]:
    """Connection ids selected by exactly one of ``connection_id`` / ``external_id``."""
    if (connection_id is None) == (external_id is None):
        raise _bad_request("give exactly one of connection_id or external_id")
    if connection_id is not None:
        cid = _resolve_connection(session, connection_id)
        return [cid], "connection", cid
    assert external_id is not None
    ids = repo.connection_ids_for_user(session, external_id)
    if not ids:
        raise _not_found("user")
    return ids, "user", external_id


# --- connections and users ------------------------------------------------------------------


@authed.get(
    "/connections",
    response_model=ConnectionPage,
    responses=ERRORS,
    summary="List connections, newest first",
)
def list_connections(
    session: ReadSession,
    external_id: OptIdent = None,
    status: OptIdent = None,
    platform: OptIdent = None,
    mode: Annotated[Literal["test", "live", "manual", "smart"] | None, Query()] = None,
    source: Annotated[
        Literal["fasten", "smart"] | None,
        Query(description="`smart`: direct SMART-on-FHIR connections; `fasten`: Fasten's"),
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> ConnectionPage:
    key = _decode("c", cursor, (datetime, str))
    rows = repo.list_connections(
        session,
        external_id=external_id,
        status=status,
        platform=platform,
        mode=mode,
        source=source,
        after=(key[0], key[1]) if key else None,
        limit=limit,
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = repo.encode_cursor("c", [last.created_at.isoformat(), last.id])
    return ConnectionPage(
        items=[ConnectionOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@authed.get(
    "/connections/{connection_id}",
    response_model=ConnectionDetail,
    responses={**ERRORS, **NOT_FOUND},
    summary="One connection (our id or org_connection_id) with its events, exports, counts",
)
def get_connection(session: ReadSession, connection_id: PathIdent) -> ConnectionDetail:
    connection = repo.find_connection(session, connection_id)
    if connection is None:
        raise _not_found("connection")
    org_id = connection.org_connection_id
    events = repo.timeline(session, org_id) if org_id else []
    return ConnectionDetail(
        connection=ConnectionOut.model_validate(connection),
        events=[TimelineEvent.model_validate(e) for e in events],
        exports=[ExportOut.model_validate(e) for e in repo.exports_for(session, [connection.id])],
        resource_counts=records.count_by_type(session, [connection.id]),
    )


@authed.get(
    "/users/{external_id}",
    response_model=UserDetail,
    responses={**ERRORS, **NOT_FOUND},
    summary="A patient's connections, exports and resource counts",
)
def get_user(session: ReadSession, external_id: PathIdent) -> UserDetail:
    connections = repo.connections_for_user(session, external_id)
    if not connections:
        raise _not_found("user")
    ids = [c.id for c in connections]
    return UserDetail(
        external_id=external_id,
        connections=[ConnectionOut.model_validate(c) for c in connections],
        exports=[ExportOut.model_validate(e) for e in repo.exports_for(session, ids)],
        resource_counts=records.count_by_type(session, ids),
    )


# --- connect links ----------------------------------------------------------------------------


@authed.post(
    "/connect-links",
    response_model=ConnectLinkOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        **ERRORS,
        503: {"model": Problem, "description": "EHI_CONNECT_LINK_SECRET is not set"},
    },
    summary="A signed, expiring connect-page link for one of your users (audited)",
)
def create_connect_link(
    body: ConnectLinkRequest, ctx: CtxDep, actor: ApiActor, request: Request
) -> ConnectLinkOut:
    return _connect_link(body, ctx, actor, request, action="connect_link.create")


@authed.post(
    "/sources/connect-links",
    response_model=ConnectLinkOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        **ERRORS,
        503: {"model": Problem, "description": "EHI_CONNECT_LINK_SECRET is not set"},
    },
    summary="A signed, expiring link to connect a hospital directly (SMART) (audited)",
)
def create_source_connect_link(
    body: ConnectLinkRequest, ctx: CtxDep, actor: ApiActor, request: Request
) -> ConnectLinkOut:
    """The connect page's link, opened at "connect your hospital directly"; the patient
    searches the institution catalog there. Same token as ``/api/connect-links``."""
    return _connect_link(
        body, ctx, actor, request, action="sources.connect_link.create", anchor="#direct"
    )


def _connect_link(
    body: ConnectLinkRequest,
    ctx: AppContext,
    actor: Actor,
    request: Request,
    *,
    action: str,
    anchor: str = "",
) -> ConnectLinkOut:
    """A signed connect link for ``body.external_id`` (audited as ``action``)."""
    ttl = body.ttl_hours * 3600
    issued = datetime.now(UTC)
    try:
        url = make_connect_link(ctx.settings, body.external_id, ttl=ttl) + anchor
    except ConnectLinkError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="EHI_CONNECT_LINK_SECRET is not set: connect links cannot be made",
        ) from exc
    _audit(ctx.db, actor, action, "external_id", body.external_id, request)
    return ConnectLinkOut(
        external_id=body.external_id, url=url, expires_at=issued + timedelta(seconds=ttl)
    )


# --- exports --------------------------------------------------------------------------------


@authed.get(
    "/exports",
    response_model=ExportPage,
    responses={**ERRORS, **NOT_FOUND},
    summary="List exports, newest first",
)
def list_exports(
    session: ReadSession,
    status: OptIdent = None,
    connection_id: OptIdent = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> ExportPage:
    key = _decode("x", cursor, (int,))
    cid = _resolve_connection(session, connection_id) if connection_id is not None else None
    rows = repo.list_exports(
        session, status=status, connection_id=cid, before_id=key[0] if key else None, limit=limit
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = repo.encode_cursor("x", [rows[-1].id])
    return ExportPage(items=[ExportOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@authed.get(
    "/exports/{export_id}",
    response_model=ExportDetail,
    responses={**ERRORS, **NOT_FOUND},
    summary="One export, with its reconciliation report",
)
def get_export(session: ReadSession, export_id: RowId) -> ExportDetail:
    export = repo.get_export(session, export_id)
    if export is None:
        raise _not_found("export")
    return ExportDetail.model_validate(export)


def _export_call(action: str, call: Any, *args: Any) -> ExportOut:

    try:
        export = call(*args)
    except LookupError:
        raise _not_found(action) from None
    except exports_service.ExportNotAllowed as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from None
    return ExportOut.model_validate(export)


@authed.post(
    "/exports",
    response_model=ExportOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**ERRORS, **NOT_FOUND, **CONFLICT},
    summary="Request an EHI export for a connection (returns the active one if any)",
)
def request_export(
    body: ExportRequest, ctx: CtxDep, actor: ApiActor, request: Request
) -> ExportOut:

    out = _export_call(
        "connection", exports_service.request_export, ctx.db, body.connection_id, "manual"
    )
    _audit(ctx.db, actor, "export.request", "export", str(out.id), request)
    return out


@authed.post(
    "/exports/{export_id}/retry",
    response_model=ExportOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**ERRORS, **NOT_FOUND, **CONFLICT},
    summary="Request a fresh export for the connection of a failed or finished one",
)
def retry_export(export_id: RowId, ctx: CtxDep, actor: ApiActor, request: Request) -> ExportOut:

    out = _export_call("export", exports_service.retry_export, ctx.db, export_id)
    _audit(ctx.db, actor, "export.retry", "export", str(export_id), request)
    return out


# --- events ---------------------------------------------------------------------------------


@authed.get(
    "/events",
    response_model=EventPage,
    responses=ERRORS,
    summary="List inbox events (without bodies), newest first",
)
def list_events(
    session: ReadSession,
    type: OptIdent = None,
    status: Annotated[EventStatus | None, Query()] = None,
    mode: Annotated[Literal["test", "live"] | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="received_at >= since")] = None,
    until: Annotated[datetime | None, Query(description="received_at < until")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> EventPage:
    key = _decode("e", cursor, (int,))
    rows = repo.list_events(
        session,
        event_type=type,
        status=status,
        mode=mode,
        since=_utc(since, "since"),
        until=_utc(until, "until"),
        before_id=key[0] if key else None,
        limit=limit,
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = repo.encode_cursor("e", [rows[-1].id])
    return EventPage(items=[EventOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@authed.get(
    "/events/{event_id}",
    response_model=EventDetail,
    responses={**ERRORS, **NOT_FOUND},
    summary="One inbox event with its envelope (audited: the body may hold PHI)",
)
def get_event(
    session: ReadSession, db: DatabaseDep, actor: ApiActor, request: Request, event_id: RowId
) -> EventDetail:
    event = repo.get_event(session, event_id)
    if event is None:
        raise _not_found("event")
    _audit(db, actor, "event.read", "event", str(event.id), request)
    try:
        envelope = orjson.loads(event.body)
    except orjson.JSONDecodeError:
        envelope = None
    summary = EventOut.model_validate(event).model_dump()
    return EventDetail(
        **summary,
        last_error=event.last_error,
        envelope=envelope if isinstance(envelope, dict) else None,
    )


def _replay(db: Database, ids: list[int]) -> int:

    done = 0
    for start in range(0, len(ids), REPLAY_CHUNK):
        done += int(replay_events(db, ids[start : start + REPLAY_CHUNK]))
    return done


@authed.post(
    "/events/{event_id}/replay",
    response_model=ReplayResult,
    responses={**ERRORS, **NOT_FOUND},
    summary="Process one event again",
)
def replay_event(
    session: ReadSession, ctx: CtxDep, actor: ApiActor, request: Request, event_id: RowId
) -> ReplayResult:
    if repo.get_event(session, event_id) is None:
        raise _not_found("event")
    session.rollback()  # end the read snapshot before writing
    _audit(ctx.db, actor, "event.replay", "event", str(event_id), request)
    return ReplayResult(requested=1, replayed=_replay(ctx.db, [event_id]))


@authed.post(
    "/events/replay",
    response_model=ReplayResult,
    responses=ERRORS,
    summary="Process events again: by ids, or every parked event",
)
def replay_many(
    body: ReplayRequest, session: ReadSession, ctx: CtxDep, actor: ApiActor, request: Request
) -> ReplayResult:
    if body.ids is not None:
        ids = sorted(set(body.ids))
    else:
        assert body.status is not None
        ids = repo.event_ids_with_status(session, body.status)
    session.rollback()
    target = f"status={body.status}" if body.status else f"{len(ids)} ids"
    _audit(ctx.db, actor, "event.replay", "events", target, request)
    return ReplayResult(requested=len(ids), replayed=_replay(ctx.db, ids) if ids else 0)


# --- resources ------------------------------------------------------------------------------


def _resource_item(row: Any) -> dict[str, Any]:
    """One list item; ``resource`` is the stored bytes embedded as they are (a raw JSON
    fragment, never parsed and dumped again: ``0.00`` stays ``0.00``)."""
    return {
        "id": row.id,
        "connection_id": row.connection_id,
        "resource_type": row.resource_type,
        "resource_id": row.resource_id,
        "version": row.version,
        "last_updated": row.last_updated,
        "ingested_at": row.ingested_at,
        "revoked": row.revoked,
        "resource": orjson.Fragment(bytes(row.raw)),
    }


@authed.get(
    "/resources",
    response_model=ResourcePage,
    responses={**ERRORS, **NOT_FOUND},
    summary="List stored FHIR resources of a connection or a patient (audited)",
)
def list_resources(
    session: ReadSession,
    db: DatabaseDep,
    actor: ApiActor,
    request: Request,
    connection_id: OptIdent = None,
    external_id: OptIdent = None,
    type: OptIdent = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Response:
    key = _decode("r", cursor, (str, str, int))
    ids, target_type, target_id = _connection_scope(session, connection_id, external_id)
    _audit(db, actor, "resources.list", target_type, target_id, request)
    rows = repo.list_resources(
        session,
        connection_ids=ids,
        resource_type=type,
        after=(key[0], key[1], key[2]) if key else None,
        limit=limit,
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = repo.encode_cursor("r", [last.connection_id, last.resource_type, last.id])
    page = {"items": [_resource_item(r) for r in rows], "next_cursor": next_cursor}
    return Response(content=orjson.dumps(page), media_type="application/json")


@authed.get(
    "/resources/export",
    response_class=StreamingResponse,
    responses={
        **ERRORS,
        **NOT_FOUND,
        200: {
            "description": "Every stored resource, streamed",
            "content": {
                FHIR_NDJSON: {"schema": {"type": "string"}},
                FHIR_JSON: {"schema": {"type": "object"}},
            },
        },
    },
    summary="Stream all stored resources as NDJSON or a FHIR Bundle (audited)",
)
def export_resources(
    session: ReadSession,
    db: DatabaseDep,
    actor: ApiActor,
    request: Request,
    connection_id: OptIdent = None,
    external_id: OptIdent = None,
    format: Annotated[Literal["ndjson", "bundle"], Query()] = "ndjson",
) -> StreamingResponse:
    ids, target_type, target_id = _connection_scope(session, connection_id, external_id)
    session.rollback()
    _audit(db, actor, f"resources.export.{format}", target_type, target_id, request)
    if format == "bundle":
        return StreamingResponse(records.iter_bundle(db, ids), media_type=FHIR_JSON)
    return StreamingResponse(records.iter_raw(db, ids), media_type=FHIR_NDJSON)


@authed.get(
    "/resources/{connection_id}/{resource_type}/{resource_id}",
    response_class=Response,
    responses={
        **ERRORS,
        **NOT_FOUND,
        200: {
            "description": "The resource exactly as stored",
            "content": {FHIR_JSON: {"schema": {"type": "object"}}},
        },
    },
    summary="One stored FHIR resource, byte for byte (audited)",
)
def get_resource(
    session: ReadSession,
    db: DatabaseDep,
    actor: ApiActor,
    request: Request,
    connection_id: PathIdent,
    resource_type: PathIdent,
    resource_id: PathIdent,
) -> Response:
    cid = _resolve_connection(session, connection_id)
    resource = records.get_resource(session, [cid], resource_type, resource_id)
    if resource is None:
        raise _not_found("resource")
    raw = bytes(resource.raw)
    target = f"{cid}/{resource_type}/{resource_id}"
    _audit(db, actor, "resource.read", "resource", target, request)
    return Response(content=raw, media_type=FHIR_JSON)


# --- connect page ---------------------------------------------------------------------------


@connect_router.post(
    "/connect/complete",
    response_model=ConnectionOut,
    responses={
        401: {"model": Problem, "description": "No valid connect-link token or API token"},
        403: {
            "model": Problem,
            "description": "external_id differs from the link's, or api_mode is not allowed",
        },
        409: {"model": Problem, "description": "Refused by the connections feature"},
    },
    summary="Record the widget.complete event of the connect page",
)
def connect_complete(
    body: WidgetComplete,
    ctx: CtxDep,
    api_actor: OptionalApiActor,
    request: Request,
    x_connect_token: Annotated[str | None, Header(max_length=2048)] = None,
) -> ConnectionOut:
    external_id = body.external_id
    if api_actor is not None:
        actor = api_actor
    else:
        token = x_connect_token or body.connect_token
        linked = read_connect_token(ctx.settings, token) if token else None
        if linked is None:
            raise unauthorized("a valid connect-link token or API token is required")
        if external_id is not None and external_id != linked:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="external_id does not match")
        external_id = linked
        actor = Actor(kind="connect", name=linked)
    data = body.model_dump(exclude={"connect_token", "api_mode"})
    data["external_id"] = external_id
    mode: Mode = body.api_mode or ctx.settings.connect_mode
    if (
        actor.kind == "connect"
        and mode != ctx.settings.connect_mode
        and not ctx.settings.allow_live_connect
    ):
        # A patient's browser does not choose the mode: the connect page's widget runs in
        # ``connect_mode`` and only its connections are recorded from a link.
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="api_mode is not allowed")
    try:
        with ctx.db.session() as session:
            connection = connections_service.record_widget_complete(session, data, mode)
            out = ConnectionOut.model_validate(connection)
            record_audit(
                session, str(actor), "connect.complete", "connection", out.id, request.url.path
            )
    except ValueError as error:  # refused by the connections feature (e.g. conflicting ids)
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from None
    return out


# What ``create_api`` mounts: both routers (routes are copied at include time, so last).
router = APIRouter()
router.include_router(authed)
router.include_router(connect_router)
