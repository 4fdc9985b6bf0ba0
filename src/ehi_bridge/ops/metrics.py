"""Prometheus metrics. Other features import these objects and increment them.

Counters count in this process only (after a restart they start again from zero, which
Prometheus' ``rate()`` handles). Gauges that describe shared state — processing lag and
exports by status — are computed from the database at scrape time, so every process
reports the same truth; see ``ops.endpoints.metrics``.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge

# The default registry: it already carries process and GC metrics, and metrics other
# modules register there are exported too.
REGISTRY: CollectorRegistry = prometheus_client.REGISTRY

deliveries_total = Counter(
    "ehi_bridge_deliveries",
    "Webhook deliveries received, by event type and outcome (stored, duplicate, rejected, ...).",
    ["type", "outcome"],
    registry=REGISTRY,
)
signature_failures_total = Counter(
    "ehi_bridge_signature_failures",
    "Webhook deliveries rejected because their signature did not verify.",
    ["mode"],
    registry=REGISTRY,
)
bytes_downloaded_total = Counter(
    "ehi_bridge_bytes_downloaded",
    "Bytes of export files downloaded from Fasten.",
    registry=REGISTRY,
)
resources_ingested_total = Counter(
    "ehi_bridge_resources_ingested",
    "FHIR resources written to the records store.",
    registry=REGISTRY,
)
alerts_sent_total = Counter(
    "ehi_bridge_alerts_sent",
    "Operator alerts delivered, by alert kind.",
    ["kind"],
    registry=REGISTRY,
)

# Set from the database on each scrape.
processing_lag_seconds = Gauge(
    "ehi_bridge_processing_lag_seconds",
    "Age of the oldest inbox event not yet processed (received or waiting to retry); 0 when none.",
    registry=REGISTRY,
)
exports_by_status = Gauge(
    "ehi_bridge_exports_by_status",
    "Exports in the database, by status.",
    ["status"],
    registry=REGISTRY,
)
exports_stalled = Gauge(
    "ehi_bridge_exports_stalled",
    "Exports our side has not moved for EHI_EXPORT_STALL_MINUTES (not asked, downloading, "
    "ingesting).",
    registry=REGISTRY,
)
