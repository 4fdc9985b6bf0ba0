"""``POST /webhooks/fasten/{test|live}``: a lean ASGI path, no framework work per request.

Order: mode configured? (503) → size (413) → signature (400/401) → envelope checks at the
door (400, ``webhooks.envelope``) → group-committed to the inbox (503 if the database fails;
422 if this one delivery cannot be stored) → 200. Never 410, never a 500 for bad input.
Error answers name the problem, never echo the input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import structlog

from ehi_bridge.config import MODES, Settings
from ehi_bridge.webhooks.envelope import EnvelopeError, check
from ehi_bridge.webhooks.inbox import Delivery, DeliveryUnstorable, InboxUnavailable, InboxWriter
from ehi_bridge.webhooks.signature import MissingHeaderError, SignatureError, Verifier

log = structlog.get_logger(__name__)

PATH_PREFIX = "/webhooks/fasten/"
_WANTED_HEADERS = {b"webhook-id", b"webhook-timestamp", b"webhook-signature", b"content-length"}
_JSON_HEADERS = [(b"content-type", b"application/json")]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
# (mode, event_type or None, outcome) — for metrics and the signature-failure alert.
Observer = Callable[[str, str | None, str], None]


class PayloadTooLarge(Exception):
    pass


def build_verifiers(settings: Settings) -> dict[str, Verifier | None]:
    verifiers: dict[str, Verifier | None] = {}
    for mode in MODES:
        secrets = settings.webhook_secrets(mode)
        verifiers[mode] = (
            Verifier(secrets, tolerance_seconds=settings.webhook_tolerance_seconds)
            if secrets
            else None
        )
        if not secrets:
            log.warning("no webhook secret configured: deliveries refused", mode=mode)
    return verifiers


async def _respond(send: Send, status: int, payload: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise PayloadTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


class WebhookReceiver:
    def __init__(
        self,
        settings: Settings,
        writer: InboxWriter,
        observer: Observer | None = None,
    ) -> None:
        self._verifiers = build_verifiers(settings)
        self._limit = settings.webhook_max_body_bytes
        self._max_depth = settings.webhook_max_json_depth
        self._writer = writer
        self._observe: Observer = observer or (lambda _m, _t, _o: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mode = scope["path"][len(PATH_PREFIX) :].rstrip("/")
        if mode not in MODES:
            await _respond(send, 404, _error("unknown webhook path"))
            return
        if scope["method"] != "POST":
            await _respond(send, 405, _error("use POST"))
            return
        verifier = self._verifiers[mode]
        if verifier is None:
            self._observe(mode, None, "not_configured")
            await _respond(send, 503, _error(f"no webhook secret configured for {mode} mode"))
            return
        status, payload = await self._handle(mode, verifier, scope, receive)
        await _respond(send, status, payload)

    async def _handle(
        self, mode: str, verifier: Verifier, scope: Scope, receive: Receive
    ) -> tuple[int, bytes]:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in _WANTED_HEADERS:
                key = name.decode("latin-1")
                text = value.decode("latin-1")
                if key == "webhook-signature" and key in headers:
                    # Several signature headers: every signature in them counts.
                    text = headers[key] + " " + text
                headers[key] = text
        length = headers.get("content-length")
        if length is not None and (
            len(length) > 20 or not length.isascii() or not length.isdigit()
        ):
            return 400, _error("bad content-length")
        declared = int(length) if length is not None else None
        try:
            body = await _read_body(receive, self._limit, declared)
        except PayloadTooLarge:
            self._observe(mode, None, "too_large")
            return 413, _error("body too large")
        except ConnectionError:
            return 400, _error("incomplete body")

        try:
            verified = verifier.verify(headers, body)
        except MissingHeaderError as exc:
            self._observe(mode, None, "bad_signature")
            return 400, _error(exc.reason)
        except SignatureError as exc:
            self._observe(mode, None, "bad_signature")
            return 401, _error(exc.reason)

        try:
            checked = check(body, mode, self._max_depth)
        except EnvelopeError as exc:
            self._observe(mode, None, "bad_envelope")
            return 400, _error(exc.reason)
        delivery = Delivery(
            event_id=checked.event_id,
            webhook_id=verified.msg_id,
            event_type=checked.event_type,
            api_mode=mode,
            body=body,
            org_connection_id=checked.org_connection_id,
        )
        try:
            await self._writer.submit(delivery)
        except DeliveryUnstorable:
            self._observe(mode, None, "unstorable")
            return 422, _error("this delivery cannot be stored")
        except InboxUnavailable:
            self._observe(mode, delivery.event_type, "unavailable")
            return 503, _error("temporarily unavailable, retry later")
        self._observe(mode, delivery.event_type, "accepted")
        return 200, b'{"received":true}'
