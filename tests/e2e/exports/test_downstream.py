"""After each ingest the app is told, by a signed ``records.ingested`` event."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.e2e.conftest import LiveStack
from tests.e2e.exports.test_pipeline import finished, wait_for
from tests.webhook_client import LIVE_SECRET

pytestmark = pytest.mark.slow

RECEIVED: list[tuple[dict[str, str], bytes]] = []


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        RECEIVED.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200 if len(RECEIVED) > 1 else 500)  # first attempt fails
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def downstream() -> Iterator[str]:
    RECEIVED.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    server.shutdown()


@pytest.fixture
def stack_env(downstream: str) -> dict[str, str]:
    return {"EHI_DOWNSTREAM_URL": downstream, "EHI_DOWNSTREAM_SECRET": LIVE_SECRET}


def test_records_ingested_is_signed_retried_and_counts_match(live_stack: LiveStack) -> None:
    conn = live_stack.sim.sim.connect(external_id="app-user-7")
    export = wait_for(finished(live_stack, conn.org_connection_id, ("complete",)))
    wait_for(lambda: len(RECEIVED) >= 2, what="retried notification")
    first, second = RECEIVED[0], RECEIVED[1]
    assert first[0]["webhook-id"] == second[0]["webhook-id"]  # same event, retried
    event = Webhook(LIVE_SECRET).verify(second[1], second[0])
    assert event["type"] == "records.ingested"
    data = event["data"]
    assert data["external_id"] == "app-user-7"
    assert data["org_connection_id"] == conn.org_connection_id
    assert data["export_id"] == export.id
    assert data["counts"]["resources"] == export.ingested_total == export.stats_total
    assert data["status"] == "complete"
