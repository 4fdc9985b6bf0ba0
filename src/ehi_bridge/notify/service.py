"""Tell a downstream system that a patient's records were ingested (optional).

A ``records.ingested`` event is POSTed to ``Settings.downstream_url``, signed per Standard
Webhooks with ``Settings.downstream_secret`` (``whsec_…``)::

    {"id": "evt_…", "type": "records.ingested", "date": "<ingest completion, ISO 8601>",
     "data": {"connection_id", "org_connection_id", "external_id", "export_id",
              "counts": {"resources", "by_type", "expected_total", "lines", "inserted",
                         "updated", "unchanged", "duplicates", "errors"},
              "status": "complete" | "partial"}}

The event id and the body are deterministic per (export, ingest run) — the run is
identified by the export's ``completed_at`` — so repeated deliveries (step retries,
crashes) are byte-identical apart from the signature headers and the receiver can
deduplicate on ``webhook-id``. Only ids and counts are sent: no FHIR content.

Retries: 429, 5xx and network errors, with full-jitter exponential backoff honouring
``Retry-After`` (up to ``max_backoff``), at most ``max_attempts`` tries. Other answers
(4xx, redirects) are final. :func:`notify_records_ingested` returns whether the receiver
accepted the event; it raises only for database errors.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import orjson
import structlog

from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.fasten.retry import full_jitter, is_retryable_status, parse_retry_after
from ehi_bridge.webhooks.signature import decode_secret, sign

log = structlog.get_logger(__name__)

EVENT_TYPE: Final = "records.ingested"
NOTIFIED_STATUSES: Final = ("complete", "partial")
_EVENT_NAMESPACE: Final = uuid.UUID("0d6d8f2a-58b6-4f0e-a3f4-6f1f4c3b9e21")
_REPORT_COUNTS: Final = ("lines", "inserted", "updated", "unchanged", "duplicates", "errors")

DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_BACKOFF_BASE: Final = 1.0
DEFAULT_MAX_BACKOFF: Final = 30.0
DEFAULT_TIMEOUT: Final = 10.0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_id(export_id: int, run: str) -> str:
    """Deterministic id of the ``records.ingested`` event of one ingest run of an export."""
    return "evt_" + uuid.uuid5(_EVENT_NAMESPACE, f"{EVENT_TYPE}:{export_id}:{run}").hex


def build_records_ingested(export: Export, connection: Connection) -> dict[str, Any] | None:
    """The event for an export whose ingest finished; None if it has not finished."""
    if export.status not in NOTIFIED_STATUSES or export.completed_at is None:
        return None
    run = _iso(export.completed_at)
    report = export.report or {}
    counts: dict[str, Any] = {
        "resources": export.ingested_total,
        "by_type": {str(k): int(v) for k, v in (export.ingested_by_type or {}).items()},
        "expected_total": export.stats_total,
    }
    for name in _REPORT_COUNTS:
        value = report.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            counts[name] = value
    return {
        "id": event_id(export.id, run),
        "type": EVENT_TYPE,
        "date": run,
        "data": {
            "connection_id": connection.id,
            "org_connection_id": connection.org_connection_id,
            "external_id": connection.external_id,
            "export_id": export.id,
            "counts": counts,
            "status": export.status,
        },
    }


def deliver_event(
    url: str,
    secret: str,
    event: dict[str, Any],
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff_base: float = DEFAULT_BACKOFF_BASE,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    timeout: float = DEFAULT_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
) -> bool:
    """POST one Standard-Webhooks-signed event; True once a 2xx arrives. Never raises for
    HTTP trouble (raises ``InvalidSecretError`` for a malformed secret)."""
    key = decode_secret(secret)
    msg_id = str(event["id"])
    body = orjson.dumps(event)
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for attempt in range(1, max_attempts + 1):
            timestamp = int(clock())  # each attempt is signed again, with a new timestamp
            headers = {
                "Content-Type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(key, msg_id, timestamp, body),
            }
            retry_after: float | None = None
            status: int | None = None
            error: str | None = None
            try:
                response = client.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                error = type(exc).__name__
            else:
                status = response.status_code
                if 200 <= status < 300:
                    log.info("downstream notified", event_id=msg_id, attempt=attempt)
                    return True
                if not is_retryable_status(status):
                    log.warning("downstream refused the event", event_id=msg_id, status=status)
                    return False
                retry_after = parse_retry_after(response.headers.get("retry-after"), clock())
            if attempt == max_attempts:
                break
            if retry_after is not None and retry_after > max_backoff:
                log.warning(
                    "downstream asked to wait too long",
                    event_id=msg_id,
                    retry_after=retry_after,
                )
                return False
            delay = (
                retry_after
                if retry_after is not None
                else full_jitter(attempt, backoff_base, max_backoff, rng)
            )
            log.info(
                "downstream retrying",
                event_id=msg_id,
                attempt=attempt,
                status=status,
                error_type=error,
                delay_seconds=round(delay, 3),
            )
            sleep(delay)
    log.warning("downstream not notified", event_id=msg_id, attempts=max_attempts)
    return False


def notify_records_ingested(
    db: Database,
    settings: Settings,
    export_id: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    **options: Any,
) -> bool:
    """Send the ``records.ingested`` event of ``export_id`` if a downstream is configured.

    Returns True when delivered; False when not configured, not ingested yet, or the
    receiver did not accept it within the retry budget. ``options`` go to
    :func:`deliver_event` (``max_attempts``, ``backoff_base``, ``timeout``, ``clock``…).
    """
    if not settings.downstream_url:
        return False
    secret = settings.downstream_secret.get_secret_value() if settings.downstream_secret else ""
    if not secret:
        log.error("downstream_url is set but downstream_secret is not: event not sent")
        return False
    with db.read_session() as session:
        export = session.get(Export, export_id)
        connection = session.get(Connection, export.connection_id) if export else None
        event = build_records_ingested(export, connection) if export and connection else None
    if event is None:
        log.info("nothing to notify", export_id=export_id)
        return False
    try:
        return deliver_event(settings.downstream_url, secret, event, sleep=sleep, **options)
    except ValueError:
        log.error("downstream_secret is not a valid whsec_ secret: event not sent")
        return False
