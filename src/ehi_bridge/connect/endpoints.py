"""HTTP routes of the connect page: a patient links health-system portals with the widget,
or connects their hospital directly (SMART on FHIR).

The page is reached through a signed, expiring link (``auth.connect_links``) naming the
patient's ``external_id``; it embeds Fasten's Stitch element, forwards ``widget.complete``
to ``POST /api/connect/complete`` with the link token, and polls ``/connect/status``.
"Connect your hospital directly": ``GET /connect/institutions`` searches the catalog and
``POST /connect/direct`` (link token in ``X-Connect-Token``) answers the EHR's authorize
URL, opened in a new window; the EHR comes back to ``/sources/callback``. The patient is
always the link's: the body names only the institution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from ehi_bridge.connect import service
from ehi_bridge.deps import DatabaseDep, ReadSession, SettingsDep

HERE = Path(__file__).parent
TokenQuery = Annotated[str, Query(max_length=2048)]

router = APIRouter(prefix="/connect", include_in_schema=False)
templates = Jinja2Templates(directory=str(HERE / "templates"))


def content_security_policy(stitch_js_url: str) -> str:
    """Scripts from us and from the widget's origin only; the widget may frame, fetch and
    style from its origin (and https origins it opens); nothing may frame this page."""
    parts = urlsplit(stitch_js_url)
    widget = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return (
        f"default-src 'self'; script-src 'self' {widget}; "
        f"connect-src 'self' {widget} https:; frame-src {widget} https:; "
        f"img-src 'self' data: {widget} https:; style-src 'self' 'unsafe-inline' {widget}; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def _headers(response: Response, csp: str | None = None) -> Response:
    if csp:
        response.headers["Content-Security-Policy"] = csp
    # The link token is in the URL: never send it to another origin in a Referer.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _render(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
    csp: str = "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
) -> Response:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    return _headers(response, csp)


def _forbidden(request: Request) -> Response:
    if request.headers.get("hx-request"):
        raise HTTPException(status_code=403, detail="this link is invalid or has expired")
    return _render(request, "forbidden.html", {}, status_code=403)


@router.get("")
def connect_page(request: Request, settings: SettingsDep, token: TokenQuery = "") -> Response:
    external_id = service.external_id_of(settings, token)
    if external_id is None:
        return _forbidden(request)
    widget = service.widget_for(settings, external_id)
    csp = content_security_policy(settings.stitch_js_url)
    return _render(request, "connect.html", {"widget": widget, "token": token}, csp=csp)


@router.get("/status")
def connect_status(
    request: Request, settings: SettingsDep, session: ReadSession, token: TokenQuery = ""
) -> Response:
    external_id = service.external_id_of(settings, token)
    if external_id is None:
        return _forbidden(request)
    rows = service.status_of(session, external_id)
    return _render(request, "_status.html", {"rows": rows})


@router.get("/institutions")
def institutions(
    request: Request,
    settings: SettingsDep,
    token: TokenQuery = "",
    q: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    if service.external_id_of(settings, token) is None:
        return _forbidden(request)
    try:
        found = service.search_institutions(settings, q)
    except ValueError as exc:
        raise HTTPException(
            status_code=500, detail="the institution catalog cannot be read"
        ) from exc
    return _render(request, "_institutions.html", {"institutions": found, "q": q})


class DirectStart(BaseModel):
    """Only the institution: the patient is the one the signed link names."""

    model_config = ConfigDict(extra="forbid")
    institution: str = Field(min_length=1, max_length=64)


@router.post("/direct")
def start_direct(
    body: DirectStart,
    db: DatabaseDep,
    settings: SettingsDep,
    x_connect_token: Annotated[str, Header(max_length=2048)] = "",
) -> Response:
    external_id = service.external_id_of(settings, x_connect_token)
    if external_id is None:
        raise HTTPException(status_code=403, detail="this link is invalid or has expired")
    try:
        url = service.begin_direct(db, settings, external_id, body.institution)
    except service.DirectUnavailable as exc:
        raise HTTPException(status_code=400, detail="this health system cannot be reached") from exc
    return _headers(JSONResponse({"authorize_url": url}))


@router.get("/static/connect.js")
def connect_js() -> Response:
    return FileResponse(
        HERE / "static" / "connect.js",
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
