"""The request guard: a pure ASGI middleware in front of the FastAPI app.

For every request (the webhook path has its own, leaner checks):

1. Paths that need an API token (``/api/…`` except ``POST /api/connect/complete``, and the
   OpenAPI documents unless ``public_api_docs``) are authenticated from the headers alone,
   before a byte of the body is read: no token, 401. The actor found is handed on in the
   scope, so the route's dependency does not look the token up again. A dashboard POST
   (but the login form) needs a validly signed session cookie before its body is read; the
   route's dependency then checks the session in the database.
2. The body is capped: a declared ``Content-Length`` over the limit is answered 413 at
   once; a body that grows past it while it is read ends the request with 413.
3. Answers carry ``Strict-Transport-Security`` when the public base URL is https.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ehi_bridge.auth.dependencies import API_ACTOR_STATE, authenticate_bearer
from ehi_bridge.dashboard.security import read_session
from ehi_bridge.deps import AppContext

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_API_PATHS = frozenset({"/api/connect/complete"})
DASHBOARD_PUBLIC_POSTS = frozenset({"/dashboard/login"})
DOC_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
HSTS = b"max-age=31536000; includeSubDomains"


class BodyTooLarge(HTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body parsing lets it through
    and the app answers it 413 like any other."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="request body too large")


def _json(status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> Any:
    body = orjson.dumps({"detail": detail})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *(extra or []),
    ]
    return headers, body


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class RequestGuard:
    def __init__(self, app: ASGIApp, ctx: AppContext) -> None:
        self.app = app
        self.ctx = ctx
        self.db = ctx.db
        self.settings = ctx.settings
        self.hsts = ctx.settings.public_base_url.lower().startswith("https://")

    def limit_for(self, path: str) -> int:
        if path in PUBLIC_API_PATHS:
            return self.settings.public_max_body_bytes
        return self.settings.api_max_body_bytes

    def needs_token(self, path: str) -> bool:
        if path.startswith("/api/") or path == "/api":
            return path not in PUBLIC_API_PATHS
        return path in DOC_PATHS and not self.settings.public_api_docs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.hsts:
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"strict-transport-security", HSTS),
                    ]
            await send(message)

        path: str = scope["path"]
        if self.needs_token(path):
            token = bearer_token(scope)
            actor = await run_in_threadpool(authenticate_bearer, self.db, token) if token else None
            if actor is None:
                await self._answer(
                    guarded_send,
                    401,
                    "a valid API token is required",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
            scope.setdefault("state", {})[API_ACTOR_STATE] = actor
        elif (
            scope["method"] == "POST"
            and path.startswith("/dashboard/")
            and path not in DASHBOARD_PUBLIC_POSTS
            and read_session(Request(scope), self.ctx) is None
        ):
            await self._answer(guarded_send, 401, "login required")
            return

        limit = self.limit_for(path)
        for name, value in scope["headers"]:
            if name == b"content-length" and (
                len(value) > 19 or not value.isdigit() or int(value) > limit
            ):
                await self._answer(guarded_send, 413, "request body too large")
                return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, capped_receive, guarded_send)
        except BodyTooLarge:
            if not started:
                await self._answer(guarded_send, 413, "request body too large")

    @staticmethod
    async def _answer(
        send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers, body = _json(status, detail, extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
