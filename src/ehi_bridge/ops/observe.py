"""What the webhook hot path reports: metrics, and the signature-failure spike alert."""

from __future__ import annotations

import threading
import time

import structlog

from ehi_bridge.alerts.service import SignatureFailureTracker, raise_signature_spike
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from ehi_bridge.ops import metrics

log = structlog.get_logger(__name__)


class WebhookObserver:
    """Called on the event loop for every delivery; anything slow goes to a thread."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db
        self._tracker = SignatureFailureTracker(
            threshold=settings.signature_failure_alert_threshold,
            window_seconds=settings.signature_failure_alert_window_seconds,
        )

    def __call__(self, mode: str, event_type: str | None, outcome: str) -> None:
        metrics.deliveries_total.labels(type=event_type or "unknown", outcome=outcome).inc()
        if outcome != "bad_signature":
            return
        metrics.signature_failures_total.labels(mode=mode).inc()
        if self._tracker.record(time.time()):
            threading.Thread(target=self._alert, args=(mode,), daemon=True).start()

    def _alert(self, mode: str) -> None:
        try:
            raise_signature_spike(
                self._db,
                self._settings,
                mode,
                self._settings.signature_failure_alert_threshold,
                self._settings.signature_failure_alert_window_seconds,
            )
        except Exception as exc:
            log.error("signature spike alert failed", error_type=type(exc).__name__)
