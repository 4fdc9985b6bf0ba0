"""The alert PHI guard and the signature-failure spike tracker (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ehi_bridge.alerts.service import (
    ALERT_KINDS,
    SignatureFailureTracker,
    sanitize_context,
    sanitize_message,
)
from ehi_bridge.alerts.sinks import AlertMessage


def test_kinds_are_the_documented_ones() -> None:
    assert set(ALERT_KINDS) == {
        "export_failed",
        "export_timed_out",
        "export_expired",
        "download_refused",
        "signature_failures_spike",
        "event_parked",
        "ingest_partial",
        "ownership_conflict",
        "export_stalled",
        "source_reauth_required",
        "source_sync_failed",
        "source_sync_partial",
    }


def test_context_keeps_ids_counts_and_reasons() -> None:
    context = {
        "export_id": 12,
        "connection_id": "c0ffee",
        "failure_reason": "token_refresh_failure",
        "host": "evil.example.com",
        "resource_type": "Observation",
        "ok": True,
    }
    assert sanitize_context(context) == {**context, "ok": 1}


def test_context_drops_or_redacts_anything_else() -> None:
    context: dict[str, object] = {
        "download_url": "https://storage.example/x?sig=1",
        "where": "https://storage.example/x?sig=1",
        "ftp": "see ftp://files/x",
        "patient_name": "Jane Doe",
        "birth_date": "1970-01-01",
        "contact": "jane@example.org",
        "seconds": 1.5,
        "nested": {"a": 1},
        "missing": None,
        "Bad-Key": "x",
        "long": "y" * 1000,
        "newline": "a\nb",
    }
    clean = sanitize_context(context)
    assert clean == {
        "download_url": "[redacted]",
        "where": "[redacted:url]",
        "ftp": "[redacted:url]",
        "patient_name": "[redacted]",
        "birth_date": "[redacted]",
        "contact": "[redacted]",
        "seconds": "[redacted:type]",
        "nested": "[redacted:type]",
        "long": "y" * 200,
        "newline": "a b",
    }


def test_context_is_bounded() -> None:
    clean = sanitize_context({f"k{i}": i for i in range(100)})
    assert len(clean) == 20


def test_message_loses_urls_and_emails() -> None:
    text = sanitize_message(
        "Export 3: GET https://s.example/o?X-Goog-Signature=abc failed for jane@example.org\n"
    )
    assert text == "Export 3: GET [redacted] failed for [redacted]"
    assert len(sanitize_message("x" * 5000)) == 500


def test_alert_text_and_ids_are_stable() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    msg = AlertMessage(7, "export_failed", "warning", "Export 12 failed", "k", 3, at, at, {"a": 1})
    assert msg.text() == "[WARNING] export_failed: Export 12 failed (x3) [a=1]"
    assert msg.event_id() == msg.event_id()
    other = AlertMessage(7, "export_failed", "warning", "m", "k", 4, at, at)
    assert other.event_id() != msg.event_id()
    assert msg.as_dict()["first_at"] == "2026-01-01T00:00:00Z"


def test_tracker_fires_once_at_the_threshold_within_the_window() -> None:
    tracker = SignatureFailureTracker(threshold=3, window_seconds=10)
    assert [tracker.record(t) for t in (0.0, 1.0)] == [False, False]
    assert tracker.record(2.0) is True
    assert tracker.record(3.0) is False  # cooling down
    assert tracker.count(3.0) == 3


def test_tracker_ignores_failures_spread_beyond_the_window() -> None:
    tracker = SignatureFailureTracker(threshold=3, window_seconds=10)
    assert not any(tracker.record(t) for t in (0.0, 6.0, 12.0, 18.0, 24.0))
    assert tracker.count(24.0) == 2


def test_tracker_fires_again_after_the_cooldown() -> None:
    tracker = SignatureFailureTracker(threshold=2, window_seconds=5, cooldown_seconds=30)
    fired = [t for t in range(0, 100) if tracker.record(float(t))]
    assert fired == [1, 31, 61, 91]


def test_tracker_memory_is_bounded() -> None:
    tracker = SignatureFailureTracker(threshold=5, window_seconds=1_000_000)
    for t in range(100_000):
        tracker.record(float(t))
    assert len(tracker._times) == 5


@pytest.mark.parametrize(("threshold", "window"), [(0, 10.0), (3, 0.0)])
def test_tracker_rejects_nonsense(threshold: int, window: float) -> None:
    with pytest.raises(ValueError):
        SignatureFailureTracker(threshold=threshold, window_seconds=window)
