"""raise_alert on SQLite and PostgreSQL, with sinks over real HTTP on loopback."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from standardwebhooks import Webhook

from ehi_bridge.alerts.models import Alert
from ehi_bridge.alerts.service import (
    EXPORT_FAILED,
    SignatureFailureTracker,
    deliver_held,
    hold_deliveries,
    raise_alert,
    raise_signature_spike,
)
from ehi_bridge.alerts.sinks import AlertMessage, LogSink, SignedHttpSink, SlackSink
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from tests.integration.fasten.servers import Receiver, receiver
from tests.support import free_port

SECRET = "whsec_" + base64.b64encode(b"alert-secret-0123456789abcdef012").decode()
T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


class Recording:
    def __init__(self, name: str, external: bool, fail: bool = False) -> None:
        self.name = name
        self.external = external
        self.fail = fail
        self.sent: list[AlertMessage] = []

    def send(self, alert: AlertMessage) -> None:
        self.sent.append(alert)
        if self.fail:
            raise RuntimeError("sink down")


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as rec:
        yield rec


def rows(db: Database) -> list[Alert]:
    with db.read_session() as session:
        return list(session.scalars(select(Alert).order_by(Alert.id)))


def test_repeats_are_counted_and_not_resent_within_the_window(db: Database) -> None:
    log_sink, chat = Recording("log", False), Recording("chat", True)
    sinks = [log_sink, chat]
    for minutes in (0, 10, 50):
        raise_alert(
            db,
            settings(),
            EXPORT_FAILED,
            "export_failed:12",
            "Export 12 failed: token_refresh_failure",
            context={"export_id": 12},
            sinks=sinks,
            now=T0 + timedelta(minutes=minutes),
        )
    [row] = rows(db)
    assert (row.count, row.first_at, row.last_at) == (3, T0, T0 + timedelta(minutes=50))
    assert row.delivered_at == T0 and row.delivery_error is None
    assert len(log_sink.sent) == 3  # every occurrence is logged
    assert [a.count for a in chat.sent] == [1]  # external sinks once per window

    later = raise_alert(
        db,
        settings(),
        EXPORT_FAILED,
        "export_failed:12",
        "Export 12 failed: token_refresh_failure",
        sinks=sinks,
        now=T0 + timedelta(minutes=61),
    )
    assert [a.count for a in chat.sent] == [1, 4]
    assert later.delivered_at == T0 + timedelta(minutes=61)


def test_different_keys_are_different_alerts(db: Database) -> None:
    chat = Recording("chat", True)
    for export_id in (1, 2):
        raise_alert(db, settings(), EXPORT_FAILED, f"export_failed:{export_id}", "m", sinks=[chat])
    assert [r.dedup_key for r in rows(db)] == ["export_failed:1", "export_failed:2"]
    assert len(chat.sent) == 2


def test_stored_and_sent_alerts_carry_no_phi(db: Database, hook: Receiver) -> None:
    alert = raise_alert(
        db,
        settings(alert_slack_webhook_url=SecretStr(hook.url)),
        "download_refused",
        "download_refused:5",
        "Export 5: link https://evil.example/f?sig=abc refused (patient jane@example.org)",
        severity="error",
        context={
            "export_id": 5,
            "host": "evil.example",
            "url": "https://evil.example/f?sig=abc",
            "given_name": "Jane",
            "elapsed": 1.25,
        },
        now=T0,
    )
    expected_context = {
        "export_id": 5,
        "host": "evil.example",
        "url": "[redacted]",
        "given_name": "[redacted]",
        "elapsed": "[redacted:type]",
    }
    [row] = rows(db)
    assert row.context == expected_context == alert.context
    assert row.message == "Export 5: link [redacted] refused (patient [redacted])"
    [request] = hook.received
    sent = request.body.decode()
    for leak in ("https://", "sig=abc", "jane", "Jane", "1.25"):
        assert leak not in sent


def test_slack_sink_posts_text_json(hook: Receiver) -> None:
    message = AlertMessage(3, "export_timed_out", "warning", "Export 3 timed out", "k", 2, T0, T0)
    SlackSink(hook.url).send(message)
    [request] = hook.received
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {
        "text": "[WARNING] export_timed_out: Export 3 timed out (x2)"
    }


def test_http_sink_signs_with_standard_webhooks(hook: Receiver) -> None:
    message = AlertMessage(
        9, "event_parked", "error", "Event e-1 parked", "event_parked:e-1", 1, T0, T0, {"n": 5}
    )
    SignedHttpSink(hook.url, SECRET).send(message)
    [request] = hook.received
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert payload["type"] == "alert.raised"
    assert payload["id"] == request.headers["webhook-id"] == message.event_id()
    assert payload["data"] == {
        "alert_id": 9,
        "kind": "event_parked",
        "severity": "error",
        "message": "Event e-1 parked",
        "dedup_key": "event_parked:e-1",
        "count": 1,
        "first_at": "2026-11-22T08:00:00Z",
        "last_at": "2026-11-22T08:00:00Z",
        "context": {"n": 5},
    }


def test_settings_configure_both_http_sinks(db: Database) -> None:
    with receiver() as slack, receiver() as http:
        configured = settings(
            alert_slack_webhook_url=SecretStr(slack.url),
            alert_http_url=http.url,
            alert_http_secret=SecretStr(SECRET),
        )
        alert = raise_alert(db, configured, "ingest_partial", "ingest_partial:4", "Export 4")
        [chat] = slack.received
        [signed] = http.received
    assert "ingest_partial" in json.loads(chat.body)["text"]
    assert Webhook(SECRET).verify(signed.body, signed.headers)["data"]["alert_id"] == alert.id
    assert alert.delivered_at is not None and alert.delivery_error is None


def test_http_sink_without_secret_is_not_used(db: Database, hook: Receiver) -> None:
    raise_alert(db, settings(alert_http_url=hook.url), "event_parked", "event_parked:x", "m")
    assert hook.received == []


def test_failing_sinks_never_raise_and_are_recorded(db: Database) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    with receiver(script=[500]) as http:
        configured = settings(
            alert_slack_webhook_url=SecretStr(dead),
            alert_http_url=http.url,
            alert_http_secret=SecretStr(SECRET),
        )
        alert = raise_alert(db, configured, EXPORT_FAILED, "export_failed:1", "m", now=T0)
        assert len(http.received) == 1
        # The next occurrence retries the failed delivery, even within the window.
        again = raise_alert(
            db,
            settings(alert_http_url=http.url, alert_http_secret=SecretStr(SECRET)),
            EXPORT_FAILED,
            "export_failed:1",
            "m",
            now=T0 + timedelta(minutes=1),
        )
        assert len(http.received) == 2
    assert alert.delivered_at is None
    assert alert.delivery_error == "slack: ConnectError; http: HTTP 500"
    assert dead not in (alert.delivery_error or "")
    assert (again.delivered_at, again.delivery_error) == (T0 + timedelta(minutes=1), None)
    [row] = rows(db)
    assert (row.count, row.delivered_at, row.delivery_error) == (2, again.delivered_at, None)


def test_a_sink_that_raises_does_not_stop_the_others(db: Database) -> None:
    broken, chat = Recording("broken", True, fail=True), Recording("chat", True)
    alert = raise_alert(db, settings(), EXPORT_FAILED, "k1", "m", sinks=[LogSink(), broken, chat])
    assert len(chat.sent) == 1
    assert alert.delivery_error == "broken: RuntimeError"


def test_in_a_session_alerts_are_sent_after_commit_only(db: Database) -> None:
    chat = Recording("chat", True)
    with db.session() as session:
        raise_alert(session, settings(), EXPORT_FAILED, "k-commit", "m", sinks=[chat])
        assert chat.sent == []  # nothing leaves before the transaction commits
    assert [a.dedup_key for a in chat.sent] == ["k-commit"]
    [row] = rows(db)
    assert row.delivered_at is not None

    with pytest.raises(RuntimeError), db.session() as session:
        raise_alert(session, settings(), EXPORT_FAILED, "k-rollback", "m", sinks=[chat])
        raise RuntimeError("caller fails")
    assert len(chat.sent) == 1
    with db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Alert)) == 1


def test_an_alert_raised_in_a_savepoint_is_sent_when_the_whole_transaction_commits(
    db: Database,
) -> None:
    """Releasing a savepoint is not a commit: the sink is called after the root commits
    (before this, SQLite callers waited 30 s on their own write lock and PostgreSQL ones
    found no row and sent nothing); a rolled back savepoint's alert is never sent."""
    chat = Recording("chat", True)
    with db.session() as session:
        with session.begin_nested():
            raise_alert(session, settings(), EXPORT_FAILED, "k-kept", "m", sinks=[chat])
        assert chat.sent == []
        with pytest.raises(RuntimeError), session.begin_nested():
            raise_alert(session, settings(), EXPORT_FAILED, "k-undone", "m", sinks=[chat])
            raise RuntimeError("this row fails")
        assert chat.sent == []
    assert [a.dedup_key for a in chat.sent] == ["k-kept"]
    assert [(row.dedup_key, row.delivered_at is not None) for row in rows(db)] == [("k-kept", True)]


def test_held_alerts_are_sent_when_the_caller_lets_go(db: Database) -> None:
    chat = Recording("chat", True)
    with db.session() as session:
        hold_deliveries(session)
        raise_alert(session, settings(), EXPORT_FAILED, "k-held", "m", sinks=[chat])
    assert chat.sent == []  # committed, still held
    deliver_held(session)
    assert [a.dedup_key for a in chat.sent] == ["k-held"]


def test_signature_spike_alert(db: Database) -> None:
    tracker = SignatureFailureTracker(threshold=3, window_seconds=60)
    chat = Recording("chat", True)
    for t in range(5):
        if tracker.record(float(t)):
            raise_signature_spike(db, settings(), "live", tracker.count(float(t)), 60, sinks=[chat])
    [sent] = chat.sent
    assert sent.kind == "signature_failures_spike" and sent.severity == "error"
    assert sent.context == {"mode": "live", "failures": 3, "window_seconds": 60}
    assert sent.dedup_key == "signature_failures_spike:live"
