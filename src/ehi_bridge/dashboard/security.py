"""Dashboard sessions, CSRF tokens and login rate limiting.

The session is a cookie signed with ``Settings.session_secret`` (itsdangerous), HttpOnly and
SameSite=Lax, scoped to ``/dashboard``. It carries the user name, a random session id and
the CSRF token bound to that session. The session id is a row of ``dashboard_sessions``:
logout revokes it there, so every process (and every restart) refuses it. Every POST must
echo the token (form field
``csrf_token`` or header ``X-CSRF-Token``). Before login, a short-lived signed cookie holds
the token the login form must echo (double submit).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ehi_bridge.auth.service import instance_secret
from ehi_bridge.deps import AppContext

log = logging.getLogger(__name__)

SESSION_COOKIE = "ehi_dashboard"
LOGIN_CSRF_COOKIE = "ehi_dashboard_login"
COOKIE_PATH = "/dashboard"
SESSION_MAX_AGE = 12 * 3600
LOGIN_CSRF_MAX_AGE = 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

_SECRET_KEY = "dashboard.session_secret"
_LIMITER_KEY = "dashboard.login_limiter"
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class DashboardSession:
    username: str
    session_id: str
    csrf_token: str


def session_secrets(ctx: AppContext) -> list[str]:
    """The secrets that verify sessions, the signing one first: ``EHI_SESSION_SECRET``, or
    the one generated once and stored in the database (the same in every process and on
    every host), so ``serve --workers N`` and several hosts agree without configuration."""
    configured = ctx.settings.session_secrets()
    if configured:
        return configured
    with _lock:
        secret = ctx.extras.get(_SECRET_KEY)
        if secret is None:
            with ctx.db.session() as session:
                secret = instance_secret(session, "dashboard_session")
            ctx.extras[_SECRET_KEY] = secret
            log.info("dashboard sessions signed with the secret stored in the database")
        return [str(secret)]


def _serializer(ctx: AppContext, salt: str) -> URLSafeTimedSerializer:
    # itsdangerous signs with the last key and verifies with all: ours lists the signer first.
    return URLSafeTimedSerializer(list(reversed(session_secrets(ctx))), salt=salt)


def _secure(request: Request, ctx: AppContext) -> bool:
    return request.url.scheme == "https" or ctx.settings.public_base_url.startswith("https://")


def _set_cookie(
    response: Response, request: Request, ctx: AppContext, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request, ctx),
    )


# -- sessions -----------------------------------------------------------------------------


def start_session(request: Request, response: Response, ctx: AppContext, username: str) -> str:
    """Set the session cookie; the new session's id, for the caller to store."""
    sid = secrets.token_urlsafe(24)
    payload = {"u": username, "sid": sid, "csrf": secrets.token_urlsafe(32)}
    token = _serializer(ctx, "ehi-bridge.dashboard.session").dumps(payload)
    _set_cookie(response, request, ctx, SESSION_COOKIE, token, SESSION_MAX_AGE)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH)
    return sid


def read_session(request: Request, ctx: AppContext) -> DashboardSession | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        data: Any = _serializer(ctx, "ehi-bridge.dashboard.session").loads(
            raw, max_age=SESSION_MAX_AGE
        )
    except BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    username, sid, csrf = data.get("u"), data.get("sid"), data.get("csrf")
    if not (isinstance(username, str) and isinstance(sid, str) and isinstance(csrf, str)):
        return None
    return DashboardSession(username=username, session_id=sid, csrf_token=csrf)


def end_session(response: Response, ctx: AppContext, session: DashboardSession) -> None:
    """Forget the cookie (the caller revokes the session id in the database)."""
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def wants_html(request: Request) -> bool:
    if request.headers.get("hx-request"):
        return False
    accept = request.headers.get("accept", "")
    return "text/html" in accept or not accept or ("*/*" in accept and "json" not in accept)


def unauthenticated(request: Request) -> HTTPException:
    """Redirect a browser to the login page; answer 401 to htmx and API-style requests."""
    if wants_html(request) and request.method == "GET":
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query

        return HTTPException(
            status_code=303, headers={"Location": f"/dashboard/login?next={quote(target)}"}
        )
    return HTTPException(
        status_code=401,
        detail="login required",
        headers={"HX-Redirect": "/dashboard/login"},
    )


# -- CSRF ---------------------------------------------------------------------------------


def tokens_match(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


async def submitted_csrf(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def refuse_cross_site(request: Request) -> None:
    """Defence in depth beside the token: browsers say when a request is cross-site."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(status_code=403, detail="cross-site request refused")


def login_csrf_token(request: Request, ctx: AppContext) -> tuple[str, str | None]:
    """The token the login form must echo, and a new cookie value when one must be set."""
    raw = request.cookies.get(LOGIN_CSRF_COOKIE)
    serializer = _serializer(ctx, "ehi-bridge.dashboard.login-csrf")
    if raw:
        try:
            value = serializer.loads(raw, max_age=LOGIN_CSRF_MAX_AGE)
            if isinstance(value, str):
                return value, None
        except BadSignature:
            pass
    token = secrets.token_urlsafe(32)
    return token, serializer.dumps(token)


def set_login_csrf_cookie(
    request: Request, response: Response, ctx: AppContext, cookie_value: str
) -> None:
    _set_cookie(response, request, ctx, LOGIN_CSRF_COOKIE, cookie_value, LOGIN_CSRF_MAX_AGE)


def login_csrf_expected(request: Request, ctx: AppContext) -> str | None:
    raw = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not raw:
        return None
    try:
        value = _serializer(ctx, "ehi-bridge.dashboard.login-csrf").loads(
            raw, max_age=LOGIN_CSRF_MAX_AGE
        )
    except BadSignature:
        return None
    return value if isinstance(value, str) else None


# -- login rate limiting ------------------------------------------------------------------


class LoginLimiter:
    """Failed logins per client address (and per client and user name), in a sliding window.

    Throttling is per client only: failures from one address never block the same user
    name from another address, so nobody can lock a named operator out by guessing.
    In-process only: with several server processes each keeps its own count.
    """

    def __init__(
        self,
        max_per_user: int = 5,
        max_per_client: int = 20,
        window_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_user = max_per_user  # per (client, user name)
        self.max_per_client = max_per_client
        self.window = window_seconds
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        entries = self._failures.setdefault(key, deque())
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        return entries

    def _keys(self, client: str, username: str) -> tuple[str, str]:
        return f"c:{client}", f"u:{client}:{username.strip().lower()}"

    def blocked(self, client: str, username: str) -> bool:
        now = self.clock()
        client_key, user_key = self._keys(client, username)
        with self._lock:
            return (
                len(self._recent(client_key, now)) >= self.max_per_client
                or len(self._recent(user_key, now)) >= self.max_per_user
            )

    def failed(self, client: str, username: str) -> None:
        now = self.clock()
        with self._lock:
            for key in self._keys(client, username):
                self._recent(key, now).append(now)

    def succeeded(self, client: str, username: str) -> None:
        _, user_key = self._keys(client, username)
        with self._lock:
            self._failures.pop(user_key, None)


def login_limiter(ctx: AppContext) -> LoginLimiter:
    with _lock:
        limiter = ctx.extras.get(_LIMITER_KEY)
        if not isinstance(limiter, LoginLimiter):
            limiter = LoginLimiter()
            ctx.extras[_LIMITER_KEY] = limiter
        return limiter
