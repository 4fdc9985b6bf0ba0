"""HTTP routes of the developer console (``ehi-bridge sources console``, port 9999).

- ``GET /``: pick a shipped platform, a sandbox profile, or define a custom source.
- ``POST /start``: start the OAuth flow (303 to the authorize endpoint).
- ``GET /callback``: the redirect back. With ``response_mode=query`` the code is exchanged
  here; with ``fragment`` the page's script reads the fragment and posts it to
  ``POST /callback``. Either way the browser lands on ``/s/{id}``.
- ``/s/{id}``: the code, the token answer (masked, with a reveal), scopes and patient;
  fetch the Patient, one FHIR GET, "sync all" into NDJSON, save as a platform definition.

On loopback no login is needed (and only loopback ``Host`` names are served, against DNS
rebinding). Off loopback every request needs the console token (``Authorization:
Bearer``, or ``?token=`` once, which sets an HttpOnly cookie). POSTs from another origin
are refused.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from ehi_bridge.sources.console.service import DEFAULT_SCOPES, Console, ConsoleError, Session

HERE = Path(__file__).parent
DASHBOARD_STATIC = HERE.parent.parent / "dashboard" / "static"
STATIC = {
    "console.js": (HERE / "static" / "console.js", "text/javascript"),
    "console.css": (HERE / "static" / "console.css", "text/css"),
    "htmx.min.js": (DASHBOARD_STATIC / "htmx.min.js", "text/javascript"),
    "dashboard.css": (DASHBOARD_STATIC / "dashboard.css", "text/css"),
}
COOKIE = "ehi_console"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    return templates.TemplateResponse(request, name, context, status_code=status)


def _session(request: Request, session_id: str) -> Session:
    try:
        return _console(request).session(session_id)
    except KeyError:
        raise HTTPException(404, "unknown session") from None


@router.get("/")
def index(request: Request) -> Response:
    return _index(request, None, 200)


def _index(request: Request, error: str | None, status: int) -> Response:
    console = _console(request)
    return _render(
        request,
        "index.html",
        {
            "platforms": console.platforms(),
            "sandboxes": console.sandbox_profiles(),
            "sandbox_url": console.sandbox_url,
            "default_scopes": DEFAULT_SCOPES,
            "error": error,
        },
        status,
    )


@router.get("/static/{name}")
def static(name: str) -> Response:
    found = STATIC.get(name)
    if found is None:
        raise HTTPException(404)
    return FileResponse(found[0], media_type=found[1], headers={"Cache-Control": "no-cache"})


@router.get("/.well-known/jwks.json")
def jwks(request: Request) -> JSONResponse:
    """The public key of this console's ``private_key_jwt`` assertions."""
    return JSONResponse(_console(request).signing_key.public_jwks())


def _redirect_uri(request: Request) -> str:
    return str(request.url_for("callback_page"))


@router.post("/start")
async def start(request: Request) -> Response:
    console = _console(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    try:
        if form.get("kind") == "custom":
            spec = console.custom_spec(form)
        else:
            spec = console.spec_for_platform(
                form.get("platform", ""),
                form.get("fhir_base_url", ""),
                form.get("client_id", ""),
                form.get("client_secret", ""),
            )
        url = await run_in_threadpool(console.begin, spec, _redirect_uri(request))
    except ConsoleError as exc:
        return _index(request, str(exc), 400)
    return RedirectResponse(url, status_code=303)


def _failed(request: Request, message: str) -> Response:
    return _render(request, "error.html", {"message": message}, 400)


@router.get("/callback", name="callback_page")
async def callback_page(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    if error:
        return _failed(
            request, f"The authorization server answered {error}: {error_description or ''}"
        )
    if code and state:
        try:
            session = await run_in_threadpool(_console(request).complete, state, code)
        except ConsoleError as exc:
            return _failed(request, str(exc))
        return RedirectResponse(f"/s/{session.id}", status_code=303)
    # response_mode=fragment: the page's script reads the fragment and posts it here.
    return _render(request, "callback.html", {})


class FragmentBody(BaseModel):
    code: str | None = Field(default=None, max_length=4096)
    state: str | None = Field(default=None, max_length=256)
    error: str | None = Field(default=None, max_length=256)
    error_description: str | None = Field(default=None, max_length=1024)


@router.post("/callback")
async def callback_fragment(request: Request, body: FragmentBody) -> JSONResponse:
    if body.error:
        return JSONResponse({"error": f"{body.error}: {body.error_description or ''}"}, 400)
    if not body.code or not body.state:
        return JSONResponse({"error": "the redirect carried no code"}, 400)
    try:
        session = await run_in_threadpool(_console(request).complete, body.state, body.code)
    except ConsoleError as exc:
        return JSONResponse({"error": str(exc)}, 400)
    return JSONResponse({"next": f"/s/{session.id}"})


@router.get("/s/{session_id}")
def session_page(request: Request, session_id: str) -> Response:
    session = _session(request, session_id)
    console = _console(request)
    return _render(
        request,
        "session.html",
        {
            "s": session,
            "token": console.token_view(session),
            "scopes": (session.scope or "").split(),
            "definitions_file": console.definitions_file,
        },
    )


@router.get("/s/{session_id}/reveal/{which}")
def reveal(request: Request, session_id: str, which: str) -> Response:
    session = _session(request, session_id)
    value = {"access": session.access_token, "refresh": session.refresh_token}.get(which)
    if value is None:
        raise HTTPException(404)
    return Response(value, media_type="text/plain", headers={"Cache-Control": "no-store"})


def _pretty(body: bytes, content_type: str) -> str:
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type:
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            return text
    return text


async def _get_result(request: Request, session: Session, path: str) -> Response:
    try:
        status, content_type, body = await _console(request).get(session, path)
    except ConsoleError as exc:
        return _render(request, "_result.html", {"error": str(exc), "path": path})
    return _render(
        request,
        "_result.html",
        {
            "path": path,
            "status": status,
            "content_type": content_type,
            "raw": body.decode("utf-8", errors="replace"),
            "pretty": _pretty(body, content_type),
            "size": len(body),
        },
    )


@router.post("/s/{session_id}/patient")
async def fetch_patient(request: Request, session_id: str) -> Response:
    session = _session(request, session_id)
    if not session.patient:
        return _render(request, "_result.html", {"error": "no patient in the token answer"})
    return await _get_result(request, session, f"Patient/{session.patient}")


@router.post("/s/{session_id}/get")
async def fhir_get(
    request: Request, session_id: str, path: Annotated[str, Form(max_length=4096)]
) -> Response:
    return await _get_result(request, _session(request, session_id), path)


@router.post("/s/{session_id}/sync")
async def sync_all(request: Request, session_id: str) -> Response:
    session = _session(request, session_id)
    try:
        _console(request).start_sync(session)
    except ConsoleError as exc:
        return _render(request, "_sync.html", {"error": str(exc), "s": session})
    return _render(request, "_sync.html", {"s": session, "job": session.job})


@router.get("/s/{session_id}/sync")
def sync_status(request: Request, session_id: str) -> Response:
    session = _session(request, session_id)
    return _render(request, "_sync.html", {"s": session, "job": session.job})


@router.post("/s/{session_id}/save")
def save(request: Request, session_id: str) -> Response:
    session = _session(request, session_id)
    try:
        path, platform = _console(request).save_definition(session)
    except (ConsoleError, ValueError) as exc:
        return _render(request, "_saved.html", {"error": str(exc)})
    return _render(request, "_saved.html", {"path": path, "platform": platform})


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


class ConsoleGuard(BaseHTTPMiddleware):
    """The token off loopback; same-origin POSTs only; headers on every answer."""

    def __init__(self, app: Any, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    def _allowed(self, request: Request) -> bool:
        if not self.token:
            return True
        given = request.headers.get("authorization", "")
        if given.lower().startswith("bearer "):
            given = given[7:]
        else:
            given = request.cookies.get(COOKIE, "")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response: Response
        query_token = request.query_params.get("token")
        if self.token and query_token is not None and request.method == "GET":
            if not hmac.compare_digest(query_token.encode(), self.token.encode()):
                return Response("console token required", 401, media_type="text/plain")
            response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="lax")
            return response
        if not self._allowed(request):
            return Response("console token required", 401, media_type="text/plain")
        if not self.token and _host_name(request.headers.get("host", "")) not in LOOPBACK_HOSTS:
            # Without a token only loopback names are served (no DNS rebinding).
            return Response("unexpected Host", 403, media_type="text/plain")
        if request.method == "POST":
            origin = request.headers.get("origin")
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin is not None and origin != own:
                return Response("cross-origin request refused", 403, media_type="text/plain")
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def create_console_app(console: Console, token: str | None = None) -> FastAPI:
    """The console's ASGI app; ``token`` set: every request must carry it."""
    app = FastAPI(
        title="ehi-bridge source console", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.console = console
    app.include_router(router)
    app.add_middleware(ConsoleGuard, token=token)
    return app
