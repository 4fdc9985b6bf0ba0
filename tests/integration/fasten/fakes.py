"""Scriptable fakes of Fasten's REST API and of the object storage its downloads redirect to."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.integration.fasten.servers import DeliberateBreak, headers_of, read_body, respond, serve

PUBLIC_ID = "public_test_abc"
PRIVATE_KEY = "private_test_s3cr3t"
BASIC = "Basic " + base64.b64encode(f"{PUBLIC_ID}:{PRIVATE_KEY}".encode()).decode()
BEARER = f"Bearer {PRIVATE_KEY}"


@dataclass
class Hit:
    method: str
    path: str
    query: str
    authorization: str | None
    range: str | None
    status: int = 0


@dataclass
class FakeStorage:
    """Object storage behind signed URLs. ``script`` holds one action per GET, then "ok":

    ``ok`` serve (honouring Range) · ``ignore_range`` always the whole file with 200 ·
    ``cut:N`` declare the full length, send N bytes, then drop the connection ·
    ``short:N`` declare the full length, send N bytes, end the response ·
    ``403``/``500``/``503`` that status · ``503ra:S`` 503 with Retry-After S
    """

    objects: dict[str, bytes] = field(default_factory=dict)
    script: list[str] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    valid_signatures: set[str] = field(default_factory=set)
    chunk: int = 16 * 1024
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    on_hit: Callable[[], None] | None = None

    def reset(self, objects: dict[str, bytes]) -> None:
        with self.lock:
            self.objects = dict(objects)
            self.script.clear()
            self.hits.clear()
            self.valid_signatures.clear()
            self.chunk = 16 * 1024
            self.on_hit = None

    def sign(self, name: str, sig: str) -> str:
        with self.lock:
            self.valid_signatures.add(sig)
        return f"{self.url}/bucket/{name}?X-Goog-Signature={sig}&X-Goog-Expires=600"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        headers = headers_of(scope)
        query = scope.get("query_string", b"").decode()
        hit = Hit(
            scope["method"],
            scope["path"],
            query,
            headers.get("authorization"),
            headers.get("range"),
        )
        with self.lock:
            self.hits.append(hit)
            action = self.script.pop(0) if self.script else "ok"
        if self.on_hit is not None:
            self.on_hit()
        sig = re.search(r"X-Goog-Signature=([^&]+)", query)
        name = scope["path"].removeprefix("/bucket/")
        if "authorization" in headers:
            # Real signed-URL storage rejects a second credential (GCS: 400).
            hit.status = 400
            await respond(send, 400, b"<Error>InvalidAuthenticationInfo</Error>")
            return
        if not sig or sig.group(1) not in self.valid_signatures or name not in self.objects:
            hit.status = 403
            await respond(send, 403, b"<Error><Code>AccessDenied</Code></Error>")
            return
        if action.isdigit() or action.startswith("503ra:"):
            status = 503 if action.startswith("503ra:") else int(action)
            extra = {"retry-after": action.split(":", 1)[1]} if ":" in action else {}
            hit.status = status
            await respond(send, status, b"<Error>nope</Error>", extra)
            return
        data = self.objects[name]
        start = 0
        range_header = headers.get("range")
        if range_header and action != "ignore_range":
            match = re.fullmatch(r"bytes=(\d+)-", range_header.strip())
            assert match, range_header
            start = int(match.group(1))
            if start >= len(data):
                hit.status = 416
                await respond(send, 416, b"", {"content-range": f"bytes */{len(data)}"})
                return
        body = memoryview(data)[start:]  # no copy: tests measure the client's memory
        status = 206 if start else 200
        response_headers = [
            (b"content-type", b"application/fhir+ndjson"),
            (b"accept-ranges", b"bytes"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 206:
            response_headers.append(
                (b"content-range", f"bytes {start}-{len(data) - 1}/{len(data)}".encode())
            )
        hit.status = status
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        limit = len(body)
        if action.startswith(("cut:", "short:")):
            limit = int(action.split(":", 1)[1])
        sent = 0
        while sent < limit:
            piece = bytes(body[sent : min(limit, sent + self.chunk)])
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            await asyncio.sleep(0)
        if action.startswith("cut:"):
            raise DeliberateBreak("connection cut on purpose")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@dataclass
class FakeApi:
    """Fasten's REST API. ``scripts[route]`` holds (status, headers) answers to give before
    the real one; routes: create, status, download, org_connection."""

    storage: FakeStorage
    scripts: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    gone: dict[str, int] = field(default_factory=dict)  # task id -> 404/410
    redirect_override: str | None = None
    accept: tuple[str, ...] = (BASIC, BEARER)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    _sigs: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def reset(self) -> None:
        with self.lock:
            self.scripts.clear()
            self.hits.clear()
            self.gone.clear()
            self.redirect_override = None
            self.accept = (BASIC, BEARER)

    def script(self, route: str, *answers: tuple[int, dict[str, str]]) -> None:
        self.scripts.setdefault(route, []).extend(answers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = headers_of(scope)
        path: str = scope["path"]
        hit = Hit(scope["method"], path, "", headers.get("authorization"), None)
        with self.lock:
            self.hits.append(hit)
        route, params = self._route(scope["method"], path)
        if route is None:
            hit.status = 404
            await respond(send, 404, b'{"success": false}')
            return
        with self.lock:
            queued = self.scripts.get(route) or []
            scripted = queued.pop(0) if queued else None
        if scripted is not None:
            hit.status = scripted[0]
            await respond(send, scripted[0], b'{"success": false, "error": "x"}', scripted[1])
            return
        if headers.get("authorization") not in self.accept:
            hit.status = 401
            await respond(send, 401, b'{"success": false, "error": "unauthorized"}')
            return
        status, answer, extra = self._answer(route, params, body)
        hit.status = status
        await respond(send, status, json.dumps(answer).encode(), extra)

    @staticmethod
    def _route(method: str, path: str) -> tuple[str | None, list[str]]:
        if method == "POST" and path == "/v1/bridge/fhir/ehi-export":
            return "create", []
        if method == "GET":
            m = re.fullmatch(r"/v1/bridge/fhir/ehi-export/([^/]+)/download/([^/]+)", path)
            if m:
                return "download", list(m.groups())
            m = re.fullmatch(r"/v1/bridge/fhir/ehi-export/([^/]+)", path)
            if m:
                return "status", list(m.groups())
            m = re.fullmatch(r"/v1/bridge/org_connection/([^/]+)", path)
            if m:
                return "org_connection", list(m.groups())
        return None, []

    def _answer(
        self, route: str, params: list[str], body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if route == "create":
            org = json.loads(body)["org_connection_id"]
            task = {"task_id": f"task-{org}", "status": "pending", "unexpected": [1, 2]}
            return 200, {"success": True, "data": task}, {}
        if route == "status":
            if params[0] == "missing":
                return 404, {"success": False}, {}
            return 200, {"success": True, "data": {"status": "success", "extra": True}}, {}
        if route == "org_connection":
            data = {
                "id": params[0],
                "org_id": "org-1",
                "brand_id": "brand-1",
                "portal_id": "portal-1",
                "endpoint_id": "endpoint-1",
                "platform_type": "epic",
                "api_mode": "test",
                "status": "authorized",
                "scope": "patient/*.read",
                "consent_expires_at": "2027-01-01T00:00:00Z",
                "something_new": {"nested": True},
            }
            return 200, {"success": True, "data": data}, {}
        task_id = params[0]
        if task_id in self.gone:
            return self.gone[task_id], {"success": False, "error": "expired"}, {}
        location = self.redirect_override or self.storage.sign(task_id, f"sig{next(self._sigs)}")
        return 302, {}, {"location": location, "cache-control": "no-store"}


@contextmanager
def fake_fasten(objects: dict[str, bytes] | None = None) -> Iterator[tuple[FakeApi, FakeStorage]]:
    storage = FakeStorage(objects=dict(objects or {}))
    api = FakeApi(storage)
    with serve(storage) as storage_url, serve(api) as api_url:
        storage.url = storage_url
        api.url = api_url
        yield api, storage
