"""The receiver under load, crashes and bad input, against the real server process."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.webhooks.models import InboxEvent
from tests.e2e.conftest import ServerFactory
from tests.support import free_port
from tests.webhook_client import TEST_SECRET, connection_success, envelope, signed

pytestmark = pytest.mark.slow


def wait_until(predicate: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def all_applied(db: Database, expected: int) -> Callable[[], bool]:
    def check() -> bool:
        with db.read_session() as session:
            applied = session.scalar(select(func.count()).where(InboxEvent.status == "applied"))
        return applied == expected

    return check


async def post_all(base: str, requests: list[tuple[bytes, dict[str, str]]]) -> list[int]:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        responses = await asyncio.gather(
            *(client.post("/webhooks/fasten/test", content=b, headers=h) for b, h in requests)
        )
    return [r.status_code for r in responses]


def test_duplicates_under_concurrency_are_stored_and_applied_once(
    service_env: dict[str, str], start_service: ServerFactory, db: Database
) -> None:
    env = {**service_env, "EHI_AUTO_REQUEST_EXPORT": "false"}
    events = [
        envelope("patient.connection_success", connection_success(f"conn-{i}")) for i in range(200)
    ]
    requests = []
    for event in events:
        for copy in range(5):
            # every copy is signed afresh, with a new timestamp and a new `date`
            event = {**event, "date": f"2026-01-01T00:00:0{copy}Z"}
            requests.append(signed(event, timestamp=int(time.time()) - copy))
    random.Random(7).shuffle(requests)

    with start_service(env) as (_proc, base):
        statuses = asyncio.run(post_all(base, requests))
        assert Counter(statuses) == {200: 1000}
        wait_until(all_applied(db, 200))

    with db.read_session() as session:
        rows = session.scalars(select(InboxEvent)).all()
        assert len(rows) == 200
        assert {r.event_id for r in rows} == {e["id"] for e in events}
        assert all(r.delivery_count == 5 for r in rows)
        assert all(r.apply_count == 1 for r in rows)
        connections = session.scalars(select(Connection)).all()
        assert len(connections) == 200
        assert {c.status for c in connections} == {"authorized"}


async def _stream_then_kill(base: str, proc: Any, stop_at: float, acknowledged: set[str]) -> None:
    """Deliver in bursts of 16 until ``stop_at``, SIGKILL the server mid-burst."""
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:

        async def one() -> None:
            event = envelope("webhook.test", {"hello": "world"})
            body, headers = signed(event)
            try:
                r = await client.post("/webhooks/fasten/test", content=body, headers=headers)
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                acknowledged.add(event["id"])

        while time.monotonic() < stop_at:
            await asyncio.gather(*(one() for _ in range(16)))
        burst = asyncio.gather(*(one() for _ in range(16)))
        await asyncio.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        await burst


def test_every_acknowledged_delivery_survives_sigkill(
    service_env: dict[str, str], start_service: ServerFactory, db: Database
) -> None:
    env = {**service_env, "EHI_AUTO_REQUEST_EXPORT": "false"}
    acknowledged: set[str] = set()
    rng = random.Random(11)
    port = free_port()
    for round_number in range(3):
        with start_service(env, port=port, name=f"crash-{round_number}") as (proc, base):
            stop_at = time.monotonic() + rng.uniform(0.3, 0.8)
            asyncio.run(_stream_then_kill(base, proc, stop_at, acknowledged))
            proc.wait()
    assert len(acknowledged) > 50
    with start_service(env, port=port, name="after-crash"):
        wait_until(all_applied(db, _count(db)))
    with db.read_session() as session:
        stored = dict(session.execute(select(InboxEvent.event_id, InboxEvent.apply_count)).all())
    missing = acknowledged - stored.keys()
    assert not missing, f"{len(missing)} acknowledged deliveries were lost"
    assert set(stored.values()) == {1}


def _count(db: Database) -> int:
    with db.read_session() as session:
        return int(session.scalar(select(func.count()).select_from(InboxEvent)) or 0)


BAD_CASES: list[tuple[str, Callable[[], tuple[bytes, dict[str, str]]], int]] = []


def _case(name: str, status: int) -> Callable[[Callable[[], Any]], Any]:
    def register(build: Callable[[], tuple[bytes, dict[str, str]]]) -> Any:
        BAD_CASES.append((name, build, status))
        return build

    return register


def _good() -> tuple[dict[str, Any], bytes, dict[str, str]]:
    event = envelope("webhook.test", {"hello": "world"})
    body, headers = signed(event)
    return event, body, headers


@_case("forged signature", 401)
def _forged() -> tuple[bytes, dict[str, str]]:
    _, body, headers = _good()
    return body, {**headers, "webhook-signature": "v1,Zm9yZ2VkIHNpZ25hdHVyZSBmb3JnZWQgc2lnbmF0dXI="}


@_case("timestamp 301 s old", 401)
def _old() -> tuple[bytes, dict[str, str]]:
    return signed(envelope("webhook.test", {}), timestamp=int(time.time()) - 301)


@_case("timestamp 301 s ahead", 401)
def _ahead() -> tuple[bytes, dict[str, str]]:
    return signed(envelope("webhook.test", {}), timestamp=int(time.time()) + 301)


for _header in ("webhook-id", "webhook-timestamp", "webhook-signature"):

    def _missing(header: str = _header) -> tuple[bytes, dict[str, str]]:
        _, body, headers = _good()
        return body, {k: v for k, v in headers.items() if k != header}

    BAD_CASES.append((f"missing {_header}", _missing, 400))


@_case("non-UTF-8 body", 400)
def _non_utf8() -> tuple[bytes, dict[str, str]]:
    return signed(b'{"id": "\xff\xfe", "type": "webhook.test", "api_mode": "test"}')


@_case("truncated JSON", 400)
def _truncated() -> tuple[bytes, dict[str, str]]:
    raw = orjson.dumps(envelope("webhook.test", {"hello": "world"}))
    return signed(raw[: len(raw) // 2])


@_case("wrong api_mode", 400)
def _wrong_mode() -> tuple[bytes, dict[str, str]]:
    return signed(envelope("webhook.test", {}, mode="live"))


@_case("5 MB body", 413)
def _huge() -> tuple[bytes, dict[str, str]]:
    return signed(envelope("webhook.test", {"pad": "x" * (5 * 1024 * 1024)}))


@_case("envelope without id", 400)
def _no_id() -> tuple[bytes, dict[str, str]]:
    event = envelope("webhook.test", {})
    del event["id"]
    return signed(orjson.dumps(event), msg_id=str(uuid.uuid4()))


def test_bad_deliveries_are_refused_and_write_nothing(
    service_env: dict[str, str], start_service: ServerFactory, db: Database
) -> None:
    with start_service(service_env) as (_proc, base), httpx.Client(base_url=base) as client:
        for name, build, expected in BAD_CASES:
            body, headers = build()
            response = client.post("/webhooks/fasten/test", content=body, headers=headers)
            assert response.status_code == expected, name
            assert response.headers["content-type"] == "application/json", name
        # a live-signed delivery to the test endpoint fails verification too
        body, headers = signed(envelope("webhook.test", {}, mode="test"), secret=TEST_SECRET)
        assert (
            client.post("/webhooks/fasten/live", content=body, headers=headers).status_code == 401
        )
        assert client.get("/webhooks/fasten/test").status_code == 405
    assert _count(db) == 0


def test_mode_without_secret_answers_503_and_never_accepts_unsigned(
    service_env: dict[str, str], start_service: ServerFactory, db: Database
) -> None:
    env = {**service_env, "EHI_LIVE_WEBHOOK_SECRETS": ""}
    with start_service(env) as (_proc, base), httpx.Client(base_url=base) as client:
        event = envelope("webhook.test", {}, mode="live")
        unsigned = client.post("/webhooks/fasten/live", content=orjson.dumps(event))
        assert unsigned.status_code == 503
        body, headers = signed(event)
        assert (
            client.post("/webhooks/fasten/live", content=body, headers=headers).status_code == 503
        )
    assert _count(db) == 0


@pytest.mark.postgres
def test_two_serve_processes_on_one_postgres_apply_each_event_once(
    base_env: dict[str, str], start_service: ServerFactory, pg_database_url: str
) -> None:
    db = Database(pg_database_url)
    env = {**base_env, "EHI_DATABASE_URL": pg_database_url, "EHI_AUTO_REQUEST_EXPORT": "false"}
    events = [
        envelope("patient.connection_success", connection_success(f"pg-conn-{i}"))
        for i in range(100)
    ]
    with (
        start_service({**env, "EHI_EXECUTOR_ID": "a"}, name="a") as (_a, base_a),
        start_service({**env, "EHI_EXECUTOR_ID": "b"}, name="b") as (_b, base_b),
    ):

        async def both() -> list[int]:
            statuses: list[int] = []
            for base in (base_a, base_b):
                statuses += await post_all(base, [signed(e) for e in events])
            return statuses

        assert asyncio.run(both()) == [200] * 200
        wait_until(all_applied(db, 100))
    with db.read_session() as session:
        rows = session.scalars(select(InboxEvent)).all()
        assert len(rows) == 100
        assert {r.apply_count for r in rows} == {1}
        assert {r.delivery_count for r in rows} == {2}
        assert session.scalar(select(func.count()).select_from(Connection)) == 100


def test_a_spike_of_signature_failures_raises_one_alert(
    service_env: dict[str, str], start_service: ServerFactory, db: Database
) -> None:
    from ehi_bridge.alerts.models import Alert

    env = {**service_env, "EHI_SIGNATURE_FAILURE_ALERT_THRESHOLD": "5"}
    with start_service(env) as (_proc, base), httpx.Client(base_url=base) as client:
        for _ in range(12):
            body, headers = _forged()
            assert (
                client.post("/webhooks/fasten/test", content=body, headers=headers).status_code
                == 401
            )

        def alerts() -> list[Alert]:
            with db.read_session() as session:
                return list(session.scalars(select(Alert)))

        wait_until(lambda: len(alerts()) == 1, timeout=30)
        (alert,) = alerts()
    assert alert.kind == "signature_failures_spike"
    assert alert.context.get("mode") == "test"
    assert _count(db) == 0
