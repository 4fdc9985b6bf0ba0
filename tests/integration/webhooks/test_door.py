"""The webhook path's checks at the door, in process against real databases: a delivery
that can never be stored is answered 4xx alone, and its neighbours commit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from ehi_bridge.server import Service
from ehi_bridge.webhooks.models import InboxEvent
from tests.webhook_client import LIVE_SECRET, TEST_SECRET, connection_success, envelope, signed


@pytest.fixture
def service(db: Database, database_url: str) -> Iterator[Service]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        test_webhook_secrets=TEST_SECRET,  # type: ignore[arg-type]
        live_webhook_secrets=LIVE_SECRET,  # type: ignore[arg-type]
    )
    service = Service(settings, background=False)
    service.writer.start()
    try:
        yield service
    finally:
        service.writer.stop()
        service.db.dispose()


async def _post_all(
    service: Service, requests: list[tuple[str, bytes, list[tuple[str, str]]]]
) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await asyncio.gather(
            *(client.post(path, content=body, headers=headers) for path, body, headers in requests)
        )


def post_all(
    service: Service, requests: list[tuple[str, bytes, list[tuple[str, str]]]]
) -> list[httpx.Response]:
    return asyncio.run(_post_all(service, requests))


def delivery(
    event: dict[str, Any] | bytes, mode: str = "test", **kw: Any
) -> tuple[str, bytes, list[tuple[str, str]]]:
    secret = TEST_SECRET if mode == "test" else LIVE_SECRET
    body, headers = signed(event, secret=secret, **kw)
    return f"/webhooks/fasten/{mode}", body, list(headers.items())


def stored(db: Database) -> list[InboxEvent]:
    with db.read_session() as session:
        return list(session.scalars(select(InboxEvent)))


def count(db: Database) -> int:
    with db.read_session() as session:
        return int(session.scalar(select(func.count()).select_from(InboxEvent)) or 0)


def test_a_timestamp_of_5000_digits_is_refused_with_400(service: Service, db: Database) -> None:
    body, headers = signed(envelope("webhook.test", {}))
    headers["webhook-timestamp"] = "9" * 5000
    [response] = post_all(service, [("/webhooks/fasten/test", body, list(headers.items()))])
    assert response.status_code == 400
    assert count(db) == 0


def test_a_body_nested_300_levels_is_refused_at_the_door(service: Service, db: Database) -> None:
    deep = b'{"d":' * 300 + b'"bottom"' + b"}" * 300  # orjson cannot write this deep
    body = orjson.dumps(envelope("webhook.test", {})).replace(b'"data":{}', b'"data":' + deep)
    [response] = post_all(service, [delivery(body)])
    assert response.status_code == 400
    assert "deeper" in response.json()["error"]
    assert count(db) == 0


def _bad_events() -> list[bytes]:
    nul_id = envelope("webhook.test", {})
    raw_nul = orjson.dumps(nul_id).replace(nul_id["id"].encode(), b"bad\\u0000id")
    long_type = envelope("x" * 129, {})
    long_org = envelope("patient.connection_success", connection_success("o" * 256))
    long_external = envelope(
        "patient.connection_success", connection_success("org-x", external_id="e" * 256)
    )
    nul_in_data = orjson.dumps(envelope("webhook.test", {})).replace(
        b'"data":{}', b'"data":{"note":"a\\u0000b"}'
    )
    control_type = envelope("patient.\x01connection_success", {})
    return [
        raw_nul,
        orjson.dumps(long_type),
        orjson.dumps(long_org),
        orjson.dumps(long_external),
        nul_in_data,
        orjson.dumps(control_type),
    ]


def test_unstorable_deliveries_among_200_valid_ones_fail_alone(
    service: Service, db: Database
) -> None:
    good = [
        delivery(envelope("patient.connection_success", connection_success(f"org-{i}")))
        for i in range(200)
    ]
    bad = [delivery(body) for body in _bad_events()]
    requests = good[:100] + bad + good[100:]
    statuses = [r.status_code for r in post_all(service, requests)]
    good_statuses = statuses[:100] + statuses[100 + len(bad) :]
    assert Counter(good_statuses) == {200: 200}
    assert statuses[100 : 100 + len(bad)] == [400] * len(bad)
    rows = stored(db)
    assert len(rows) == 200
    assert all(len(r.event_type) <= 128 for r in rows)


def test_error_answers_do_not_echo_the_input(service: Service) -> None:
    marker = "secret-looking-" + uuid.uuid4().hex
    event = envelope("x" * 129 + marker, {})
    [response] = post_all(service, [delivery(event)])
    assert response.status_code == 400
    assert marker not in response.text


def test_the_same_event_id_on_test_then_live_stores_the_live_event(
    service: Service, db: Database
) -> None:
    event_id = str(uuid.uuid4())
    test_event = envelope("webhook.test", {"hello": "world"}, event_id=event_id)
    live_event = envelope(
        "patient.connection_success", connection_success("org-live"), mode="live", event_id=event_id
    )
    [first] = post_all(service, [delivery(test_event)])
    [second] = post_all(service, [delivery(live_event, mode="live")])
    assert (first.status_code, second.status_code) == (200, 200)
    rows = {r.api_mode: r for r in stored(db)}
    assert set(rows) == {"test", "live"}
    assert rows["live"].event_type == "patient.connection_success"
    assert rows["live"].org_connection_id == "org-live"
    assert rows["test"].event_type == "webhook.test"
    # The same event again on each path is a redelivery of that mode's event.
    post_all(service, [delivery(test_event), delivery(live_event, mode="live")])
    assert {r.api_mode: r.delivery_count for r in stored(db)} == {"test": 2, "live": 2}


def test_every_webhook_signature_header_is_read(service: Service, db: Database) -> None:
    path, body, headers = delivery(envelope("webhook.test", {}))
    good = dict(headers)["webhook-signature"]
    others = [(k, v) for k, v in headers if k != "webhook-signature"]
    # the valid signature first, a stale one after it: only the last was read before
    twice = [*others, ("webhook-signature", good), ("webhook-signature", "v1,AAAA")]
    [response] = post_all(service, [(path, body, twice)])
    assert response.status_code == 200
    assert count(db) == 1


def test_a_content_length_of_5000_digits_is_refused_with_400(service: Service) -> None:
    path, body, headers = delivery(envelope("webhook.test", {}), timestamp=int(time.time()))
    scope_headers = [(k, v) for k, v in headers if k != "content-length"]
    transport_request = [(path, body, [*scope_headers, ("content-length", "9" * 5000)])]
    [response] = post_all(service, transport_request)
    assert response.status_code in (400, 413)


def test_a_non_ascii_digit_content_length_is_400(service: Service) -> None:
    path, body, headers = delivery(envelope("webhook.test", {}))
    others = [(k, v) for k, v in headers if k.lower() != "content-length"]
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in others]
        + [(b"content-length", "\u00b2".encode("latin-1"))],
    }
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    asyncio.run(service.receiver(scope, receive, send))
    assert sent[0]["status"] == 400
