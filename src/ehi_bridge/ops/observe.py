"""Hooks the webhook hot path calls: metrics and the signature-failure spike alert."""

from __future__ import annotations


def webhook_outcome(mode: str, event_type: str | None, outcome: str) -> None:
    from ehi_bridge.ops import metrics

    metrics.deliveries_total.labels(type=event_type or "unknown", outcome=outcome).inc()
    if outcome == "bad_signature":
        metrics.signature_failures_total.labels(mode=mode).inc()
