"""HTTP routes of the dashboard: server-rendered pages (Jinja2) enhanced with htmx.

Every page needs a signed session cookie (``/dashboard/login``); every POST needs the
session's CSRF token. Pages that show a patient's records write an audit row.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from ehi_bridge.auth.connect_links import ConnectLinkError, make_connect_link
from ehi_bridge.auth.service import (
    login_session_active,
    record_audit,
    revoke_login_session,
    start_login_session,
    verify_user,
)
from ehi_bridge.connections.models import Connection
from ehi_bridge.dashboard import repository as repo
from ehi_bridge.dashboard import security
from ehi_bridge.dashboard import service as svc
from ehi_bridge.dashboard.fhir_text import platform_name
from ehi_bridge.dashboard.security import DashboardSession
from ehi_bridge.deps import AppContext, CtxDep, ReadSession, WriteSession
from ehi_bridge.webhooks.models import InboxStatus

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_FILES = {
    "htmx.min.js": "text/javascript",
    "chart.umd.min.js": "text/javascript",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
NOTICES = {
    "export_requested": "Export requested.",
    "sync_started": "Sync started.",
    "export_retried": "A new export was requested.",
    "replayed": "Event(s) queued for replay.",
    "logged_out": "You are logged out.",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)

NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"  # NUL is refused by PostgreSQL; no control characters
MAX_ROW_ID = 2**63 - 1

router = APIRouter(prefix="/dashboard", include_in_schema=False)
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _fmt_dt(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


templates.env.filters["dt"] = _fmt_dt
templates.env.filters["platform"] = platform_name


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


# -- dependencies -------------------------------------------------------------------------


def signed_in(request: Request, ctx: AppContext) -> DashboardSession | None:
    """The cookie's session if it is not logged out and its user is still enabled.

    One primary-key lookup joined to the user per request (the same one query the user
    check cost before sessions were stored), so a logout or a disabled user takes effect
    at once in every process, without a cache to expire.
    """
    session = security.read_session(request, ctx)
    if session is None:
        return None
    with ctx.db.read_session() as db_session:
        active = login_session_active(db_session, session.session_id, session.username)
    return session if active else None


def current_user(request: Request, ctx: CtxDep) -> DashboardSession:
    """The signed-in operator."""
    session = signed_in(request, ctx)
    if session is None:
        raise security.unauthenticated(request)
    return session


UserDep = Annotated[DashboardSession, Depends(current_user)]


async def csrf_protected(request: Request, user: UserDep) -> DashboardSession:
    """Every state-changing request echoes the CSRF token bound to its session."""
    security.refuse_cross_site(request)
    if not security.tokens_match(user.csrf_token, await security.submitted_csrf(request)):
        raise HTTPException(status_code=403, detail="CSRF token missing or wrong")
    return user


CsrfUserDep = Annotated[DashboardSession, Depends(csrf_protected)]


def _page(request: Request, user: DashboardSession, **extra: Any) -> dict[str, Any]:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return {"user": user, "csrf_token": user.csrf_token, "notice": notice, **extra}


def _actor(user: DashboardSession) -> str:
    return f"user:{user.username}"


def _audit(
    ctx: AppContext,
    user: DashboardSession,
    action: str,
    target_type: str,
    target_id: str,
    request: Request,
) -> None:
    """One audit row in its own short transaction (reads stay off the write lock)."""
    with ctx.db.session() as session:
        record_audit(session, _actor(user), action, target_type, target_id, request.url.path)


# -- static files -------------------------------------------------------------------------


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404)
    return FileResponse(
        STATIC_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# -- login / logout -----------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/dashboard") and not target.startswith("//"):
        return target
    return "/dashboard"


def _login_page(
    request: Request, ctx: CtxDep, error: str | None, next_url: str, status_code: int
) -> Response:
    token, cookie = security.login_csrf_token(request, ctx)
    notice = NOTICES.get(request.query_params.get("notice", ""))
    response = render(
        request,
        "login.html",
        {"csrf_token": token, "error": error, "next": next_url, "notice": notice, "user": None},
        status_code=status_code,
    )
    if cookie is not None:
        security.set_login_csrf_cookie(request, response, ctx, cookie)
    return response


@router.get("/login")
def login_form(request: Request, ctx: CtxDep, next: str | None = None) -> Response:
    if signed_in(request, ctx) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, ctx, None, _safe_next(next), 200)


@router.post("/login")
def login(
    request: Request,
    ctx: CtxDep,
    session: WriteSession,
    username: Annotated[str, Form(max_length=128)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/dashboard",
) -> Response:
    security.refuse_cross_site(request)
    expected = security.login_csrf_expected(request, ctx)
    if expected is None or not security.tokens_match(expected, csrf_token):
        raise HTTPException(status_code=403, detail="CSRF token missing or wrong")
    client = request.client.host if request.client else "unknown"
    limiter = security.login_limiter(ctx)
    if limiter.blocked(client, username):
        return _login_page(
            request, ctx, "Too many failed attempts; try again later.", _safe_next(next), 429
        )
    user = verify_user(session, username, password) if username and password else None
    if user is None:
        limiter.failed(client, username)
        return _login_page(request, ctx, "Wrong username or password.", _safe_next(next), 401)
    limiter.succeeded(client, username)
    response = RedirectResponse(_safe_next(next), status_code=303)
    sid = security.start_session(request, response, ctx, user.username)
    start_login_session(session, sid, user.username)
    return response


@router.post("/logout")
def logout(ctx: CtxDep, user: CsrfUserDep) -> Response:
    with ctx.db.session() as session:
        revoke_login_session(session, user.session_id)
    response = RedirectResponse("/dashboard/login?notice=logged_out", status_code=303)
    security.end_session(response, ctx, user)
    return response


# -- overview -----------------------------------------------------------------------------


@router.get("")
@router.get("/")
def overview(request: Request, user: UserDep, session: ReadSession) -> Response:
    data = svc.overview(session)
    return render(request, "overview.html", _page(request, user, data=data, nav="overview"))


# -- connections --------------------------------------------------------------------------


@router.get("/connections")
def connections(
    request: Request,
    user: UserDep,
    session: ReadSession,
    q: Annotated[str, Query(max_length=255, pattern=NO_CONTROL)] = "",
    status: Annotated[str, Query(max_length=16, pattern=NO_CONTROL)] = "",
    platform: Annotated[str, Query(max_length=64, pattern=NO_CONTROL)] = "",
    mode: Annotated[str, Query(max_length=8, pattern=NO_CONTROL)] = "",
    after: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    if after and repo.decode_cursor(after) is None:
        raise HTTPException(status_code=400, detail="invalid cursor")
    filters = repo.ConnectionFilter(q=q.strip(), status=status, platform=platform, mode=mode)
    rows, next_cursor = repo.list_connections(session, filters, after)
    params = {k: v for k, v in (("q", q), ("status", status), ("platform", platform)) if v}
    if mode:
        params["mode"] = mode
    next_url = (
        "/dashboard/connections?" + urlencode({**params, "after": next_cursor})
        if next_cursor
        else None
    )
    context = _page(
        request,
        user,
        rows=rows,
        direct=repo.direct_facts(session, [c.id for c in rows if c.source == "smart"]),
        filters=filters,
        next_url=next_url,
        statuses=repo.distinct_values(session, Connection.status),
        platforms=repo.distinct_values(session, Connection.platform_type),
        modes=("test", "live", "manual"),
        nav="connections",
    )
    partial = request.headers.get("hx-request") and not request.headers.get(
        "hx-history-restore-request"
    )
    if partial and request.headers.get("hx-target") != "main":
        name = "_connection_rows.html" if after else "_connection_table.html"
        return render(request, name, context)
    return render(request, "connections.html", context)


def _connection_or_404(session: Any, key: str) -> Connection:
    connection = repo.find_connection(session, key)
    if connection is None:
        raise HTTPException(status_code=404, detail="no such connection")
    return connection


@router.get("/connections/{key}")
def connection_detail(
    request: Request, ctx: CtxDep, user: UserDep, session: ReadSession, key: str
) -> Response:
    connection = _connection_or_404(session, key)
    _audit(ctx, user, "dashboard.connection.view", "connection", connection.id, request)
    page = svc.connection_page(session, connection)
    return render(request, "connection.html", _page(request, user, page=page, nav="connections"))


@router.get("/connections/{key}/records")
def connection_records(
    request: Request,
    user: UserDep,
    ctx: CtxDep,
    session: ReadSession,
    key: str,
    type: Annotated[str, Query(min_length=1, max_length=64, pattern=NO_CONTROL)],
    after: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> Response:
    connection = _connection_or_404(session, key)
    # The audit row is committed before any record is read.
    _audit(ctx, user, "dashboard.records.view", "connection", connection.id, request)
    rows, next_after = repo.list_resources(session, connection.id, type, after)
    context = _page(
        request,
        user,
        connection=connection,
        resource_type=type,
        rows=[(r, svc.pretty_resource(r), *svc.record_summary(r)) for r in rows],
        next_url=(
            f"/dashboard/connections/{connection.id}/records?"
            + urlencode({"type": type, "after": next_after})
            if next_after is not None
            else None
        ),
        nav="connections",
    )
    name = "_records.html" if request.headers.get("hx-request") else "records.html"
    return render(request, name, context)


def _refused(request: Request, user: DashboardSession, message: str, back: str) -> Response:
    context = _page(request, user, message=message, back=back, nav="")
    return render(request, "error.html", context, status_code=409)


def _back(path: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?notice={notice}", status_code=303)


@router.post("/connections/{key}/export")
def connection_request_export(
    request: Request, ctx: CtxDep, user: CsrfUserDep, key: str
) -> Response:
    with ctx.db.read_session() as session:
        connection = _connection_or_404(session, key)
    try:
        export = svc.request_export(ctx, connection.id)
    except svc.ActionError as exc:
        return _refused(request, user, str(exc), f"/dashboard/connections/{connection.id}")
    _audit(ctx, user, "dashboard.export.request", "export", str(export.id), request)
    return _back(f"/dashboard/connections/{connection.id}", "export_requested")


@router.post("/connections/{key}/resync")
def connection_resync(request: Request, ctx: CtxDep, user: CsrfUserDep, key: str) -> Response:
    """Sync a direct (SMART) connection again."""
    with ctx.db.read_session() as session:
        connection = _connection_or_404(session, key)
    try:
        export_id = svc.resync_source(ctx, connection.id)
    except svc.ActionError as exc:
        return _refused(request, user, str(exc), "/dashboard/connections")
    _audit(ctx, user, "dashboard.source.resync", "export", str(export_id), request)
    return _back("/dashboard/connections", "sync_started")


@router.post("/exports/{export_id}/retry")
def export_retry(request: Request, ctx: CtxDep, user: CsrfUserDep, export_id: int) -> Response:
    try:
        export = svc.retry_export(ctx, export_id)
    except svc.ActionError as exc:
        return _refused(request, user, str(exc), "/dashboard/failures")
    _audit(ctx, user, "dashboard.export.retry", "export", str(export_id), request)
    return _back(f"/dashboard/connections/{export.connection_id}", "export_retried")


# -- events -------------------------------------------------------------------------------


@router.get("/events")
def events(
    request: Request,
    user: UserDep,
    session: ReadSession,
    type: Annotated[str, Query(max_length=128, pattern=NO_CONTROL)] = "",
    status: Annotated[str, Query(max_length=16, pattern=NO_CONTROL)] = "",
    org_connection_id: Annotated[str, Query(max_length=255, pattern=NO_CONTROL)] = "",
    before: Annotated[int | None, Query(ge=0, le=MAX_ROW_ID)] = None,
) -> Response:
    filters = repo.EventFilter(
        event_type=type.strip(), status=status, org_connection_id=org_connection_id.strip()
    )
    rows, next_before = repo.list_events(session, filters, before)
    params = {
        k: v
        for k, v in (("type", type), ("status", status), ("org_connection_id", org_connection_id))
        if v
    }
    next_url = (
        "/dashboard/events?" + urlencode({**params, "before": next_before})
        if next_before is not None
        else None
    )
    return render(
        request,
        "events.html",
        _page(
            request,
            user,
            rows=rows,
            filters=filters,
            statuses=InboxStatus.ALL,
            next_url=next_url,
            nav="events",
        ),
    )


def _ids(form: FormData) -> list[int]:
    ids: list[int] = []
    for value in form.getlist("ids"):
        if isinstance(value, str) and value.strip().isdigit():
            ids.append(int(value))
    return ids[:500]


@router.post("/events/replay")
async def events_replay(request: Request, ctx: CtxDep, user: CsrfUserDep) -> Response:
    ids = _ids(await request.form())
    if not ids:
        raise HTTPException(status_code=422, detail="no event ids given")
    count = await run_in_threadpool(_replay_and_audit, ctx, user, ids, request.url.path)
    if request.headers.get("hx-request"):
        rows = await run_in_threadpool(_events_by_id, ctx, ids)
        return render(
            request,
            "_event_rows.html",
            {"rows": rows, "csrf_token": user.csrf_token, "replayed": count},
        )
    return _back("/dashboard/events", "replayed")


def _replay_and_audit(ctx: CtxDep, user: DashboardSession, ids: list[int], path: str) -> int:
    count = svc.replay(ctx, ids)
    with ctx.db.session() as session:
        for event_id in ids:
            record_audit(
                session, _actor(user), "dashboard.event.replay", "event", str(event_id), path
            )
    return count


def _events_by_id(ctx: CtxDep, ids: list[int]) -> list[Any]:
    with ctx.db.read_session() as session:
        return sorted(repo.get_events(session, ids), key=lambda e: -e.id)


# -- failures & alerts --------------------------------------------------------------------


@router.get("/failures")
def failures(request: Request, user: UserDep, session: ReadSession) -> Response:
    return render(
        request,
        "failures.html",
        _page(
            request,
            user,
            parked=repo.parked_events(session),
            exports=repo.failed_exports(session),
            alerts=repo.recent_alerts(session),
            nav="failures",
        ),
    )


# -- connect links ------------------------------------------------------------------------

LINK_TTL_CHOICES = (1, 24, 72, 168)


@router.get("/connect-link")
def connect_link_form(request: Request, user: UserDep) -> Response:
    return render(
        request,
        "connect_link.html",
        _page(request, user, link=None, error=None, ttls=LINK_TTL_CHOICES, nav="connect-link"),
    )


@router.post("/connect-link")
def connect_link_create(
    request: Request,
    ctx: CtxDep,
    user: CsrfUserDep,
    external_id: Annotated[str, Form(min_length=1, max_length=255)],
    ttl_hours: Annotated[int, Form(ge=1, le=168)] = 24,
) -> Response:
    """A signed link for the patient ``external_id`` to open the connect page."""

    link = error = None
    try:
        link = make_connect_link(ctx.settings, external_id.strip(), ttl=ttl_hours * 3600)
        _audit(
            ctx, user, "dashboard.connect_link.create", "external_id", external_id.strip(), request
        )
    except ConnectLinkError:
        error = "EHI_CONNECT_LINK_SECRET is not set: connect links cannot be made."
    return render(
        request,
        "connect_link.html",
        _page(
            request,
            user,
            link=link,
            error=error,
            external_id=external_id.strip(),
            ttl_hours=ttl_hours,
            ttls=LINK_TTL_CHOICES,
            nav="connect-link",
        ),
        status_code=200 if link else 409,
    )
