"""Where operator alerts go. One small synchronous interface, :class:`AlertSink`.

``send`` raises :class:`SinkError` (or anything else) on failure; the alert service catches
it, records a short reason in ``alerts.delivery_error`` and never lets it reach the caller.
Sinks receive an :class:`AlertMessage`, which the service has already stripped of anything
that could be PHI (see ``alerts/service.py``); they add nothing from elsewhere.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import httpx
import orjson
import structlog

from ehi_bridge.config import Settings
from ehi_bridge.webhooks.signature import decode_secret, sign

log = structlog.get_logger(__name__)

SINK_TIMEOUT_SECONDS = 5.0
ALERT_EVENT_TYPE = "alert.raised"
_ALERT_ID_NAMESPACE = uuid.UUID("5b0f6c1e-7a44-4f8e-9d8a-3c2f1e0a9b71")


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """What a sink may show: ids, kinds, counts and reasons only (no PHI, no URLs)."""

    alert_id: int
    kind: str
    severity: str
    message: str
    dedup_key: str
    count: int
    first_at: datetime
    last_at: datetime
    context: Mapping[str, str | int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "dedup_key": self.dedup_key,
            "count": self.count,
            "first_at": _iso(self.first_at),
            "last_at": _iso(self.last_at),
            "context": dict(self.context),
        }

    def text(self) -> str:
        """One line for chat: ``[WARNING] export_failed: Export 12 failed: … (x3)``."""
        repeat = f" (x{self.count})" if self.count > 1 else ""
        details = ", ".join(f"{k}={v}" for k, v in sorted(self.context.items()))
        suffix = f" [{details}]" if details else ""
        return f"[{self.severity.upper()}] {self.kind}: {self.message}{repeat}{suffix}"

    def event_id(self) -> str:
        """Stable per (alert, occurrence count): a receiver can drop repeated deliveries."""
        return "alert_" + uuid.uuid5(_ALERT_ID_NAMESPACE, f"{self.alert_id}:{self.count}").hex


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SinkError(Exception):
    """A sink could not deliver. ``reason`` is short and safe to store (no URL, no body)."""

    def __init__(self, sink: str, reason: str) -> None:
        super().__init__(f"{sink}: {reason}")
        self.sink = sink
        self.reason = reason


@runtime_checkable
class AlertSink(Protocol):
    """``external`` sinks leave the process; repeats inside the dedup window skip them."""

    name: str
    external: bool

    def send(self, alert: AlertMessage) -> None: ...


_LEVELS = {"info": "info", "warning": "warning", "error": "error", "critical": "critical"}


class LogSink:
    """Writes every occurrence to the structured log (stderr)."""

    name = "log"
    external = False

    def send(self, alert: AlertMessage) -> None:
        method = getattr(log, _LEVELS.get(alert.severity, "warning"))
        method(
            "alert",
            alert_id=alert.alert_id,
            alert_kind=alert.kind,
            severity=alert.severity,
            alert_message=alert.message,
            occurrences=alert.count,
            **{f"ctx_{k}": v for k, v in alert.context.items()},
        )


def _post(sink: str, url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise SinkError(sink, type(exc).__name__) from None
    if not 200 <= response.status_code < 300:
        raise SinkError(sink, f"HTTP {response.status_code}")


class SlackSink:
    """A Slack-compatible incoming webhook: POST ``{"text": …}``."""

    name = "slack"
    external = True

    def __init__(self, url: str, timeout: float = SINK_TIMEOUT_SECONDS) -> None:
        self._url = url  # a secret (the path is the credential): never logged
        self._timeout = timeout

    def send(self, alert: AlertMessage) -> None:
        body = orjson.dumps({"text": alert.text()})
        _post(self.name, self._url, body, {"Content-Type": "application/json"}, self._timeout)


class SignedHttpSink:
    """A JSON POST signed per Standard Webhooks (``webhook-id``/``-timestamp``/``-signature``).

    Body: ``{"id", "type": "alert.raised", "timestamp", "data": AlertMessage.as_dict()}``.
    """

    name = "http"
    external = True

    def __init__(
        self,
        url: str,
        secret: str,
        timeout: float = SINK_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._key = decode_secret(secret)
        self._timeout = timeout
        self._clock = clock

    def send(self, alert: AlertMessage) -> None:
        msg_id = alert.event_id()
        timestamp = int(self._clock())
        body = orjson.dumps(
            {
                "id": msg_id,
                "type": ALERT_EVENT_TYPE,
                "timestamp": _iso(datetime.fromtimestamp(timestamp, UTC)),
                "data": alert.as_dict(),
            }
        )
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, msg_id, timestamp, body),
        }
        _post(self.name, self._url, body, headers, self._timeout)


def sinks_from_settings(settings: Settings) -> list[AlertSink]:
    """The log sink always; Slack and signed HTTP when configured."""
    sinks: list[AlertSink] = [LogSink()]
    if settings.alert_slack_webhook_url is not None:
        url = settings.alert_slack_webhook_url.get_secret_value()
        if url:
            sinks.append(SlackSink(url))
    if settings.alert_http_url:
        secret = settings.alert_http_secret.get_secret_value() if settings.alert_http_secret else ""
        if secret:
            try:
                sinks.append(SignedHttpSink(settings.alert_http_url, secret))
            except ValueError:
                log.error("alert HTTP sink disabled: alert_http_secret is not a whsec_ secret")
        else:
            log.error("alert HTTP sink disabled: alert_http_url needs alert_http_secret")
    return sinks
