"""Builds and signs Fasten-style webhook deliveries for tests and benchmarks."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from ehi_bridge.webhooks.signature import decode_secret, sign

TEST_SECRET = "whsec_" + base64.b64encode(b"ehi-bridge-test-secret-0123456789").decode()
LIVE_SECRET = "whsec_" + base64.b64encode(b"ehi-bridge-live-secret-0123456789").decode()


def envelope(
    event_type: str,
    data: dict[str, Any],
    *,
    mode: str = "test",
    event_id: str | None = None,
    date: datetime | None = None,
) -> dict[str, Any]:
    return {
        "api_mode": mode,
        "date": (date or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "id": event_id or str(uuid.uuid4()),
        "type": event_type,
        "data": data,
    }


def signed(
    body: dict[str, Any] | bytes,
    *,
    secret: str = TEST_SECRET,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    if msg_id is None:
        msg_id = orjson.loads(raw)["id"] if not isinstance(body, bytes) else str(uuid.uuid4())
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(decode_secret(secret), msg_id, ts, raw),
        "content-type": "application/json",
    }
    return raw, headers


def connection_success(org_connection_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "org_connection_id": org_connection_id,
        "endpoint_id": "ep-1",
        "brand_id": "brand-1",
        "portal_id": "portal-1",
        "connection_status": "authorized",
        "platform_type": "epic",
        "request_id": "req-1",
        "external_id": "user-1",
        "external_state": "state-1",
        **extra,
    }
