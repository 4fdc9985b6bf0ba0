"""What the dashboard pages show and the actions its buttons take (no HTTP here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy.orm import Session

from ehi_bridge.connections.models import Connection
from ehi_bridge.dashboard import repository as repo
from ehi_bridge.db.base import utcnow
from ehi_bridge.deps import AppContext
from ehi_bridge.exports.models import Export
from ehi_bridge.records import quarantine
from ehi_bridge.records.models import IngestError, IngestRun
from ehi_bridge.webhooks.models import InboxEvent

DELIVERY_WINDOW = timedelta(hours=48)
HISTOGRAM_WINDOW = timedelta(days=7)


@dataclass
class Overview:
    connections_by_status: dict[str, int]
    connections_by_platform: dict[str, int]
    exports_by_status: dict[str, int]
    open_events: dict[str, int]
    alerts: int
    charts: dict[str, Any] = field(default_factory=dict)

    @property
    def connections_total(self) -> int:
        return sum(self.connections_by_status.values())

    @property
    def exports_total(self) -> int:
        return sum(self.exports_by_status.values())

    @property
    def deliveries_48h(self) -> int:
        series = self.charts.get("deliveries", {}).get("series", [])
        return sum(sum(s["values"]) for s in series)


def overview(session: Session) -> Overview:
    now = utcnow()
    result = Overview(
        connections_by_status=repo.count_by(session, Connection.status),
        connections_by_platform=repo.count_by(session, Connection.platform_type),
        exports_by_status=repo.count_by(session, Export.status),
        open_events=repo.open_event_counts(session),
        alerts=repo.open_alert_count(session),
    )
    result.charts = {
        "deliveries": deliveries_chart(session, now - DELIVERY_WINDOW, now),
        "exports": {
            "labels": list(result.exports_by_status),
            "values": list(result.exports_by_status.values()),
        },
        "histogram": _pairs(repo.connection_to_records_histogram(session, now - HISTOGRAM_WINDOW)),
        "failures": _pairs(repo.failures_by_reason(session)[:12]),
    }
    return result


def _pairs(pairs: Sequence[tuple[str, int]]) -> dict[str, list[Any]]:
    return {"labels": [p[0] for p in pairs], "values": [p[1] for p in pairs]}


def deliveries_chart(session: Session, since: Any, now: Any) -> dict[str, Any]:
    """One label per hour of the window (empty hours included), one series per type."""
    start = since.replace(minute=0, second=0, microsecond=0)
    labels = []
    hour = start
    while hour <= now:
        labels.append(hour.strftime("%Y-%m-%d %H:00"))
        hour += timedelta(hours=1)
    index = {label: i for i, label in enumerate(labels)}
    series: dict[str, list[int]] = {}
    for label, event_type, count in repo.deliveries_per_hour(session, since):
        values = series.setdefault(event_type, [0] * len(labels))
        if label in index:
            values[index[label]] += count
    return {
        "labels": [label[5:] for label in labels],
        "series": [{"name": name, "values": values} for name, values in sorted(series.items())],
    }


# -- connection page ----------------------------------------------------------------------


@dataclass
class ExportView:
    export: Export
    ingest_errors: int
    reconciliation: list[tuple[str, int | None, int | None]]
    report_items: list[tuple[str, str]]
    retryable: bool


def _reconciliation(export: Export) -> list[tuple[str, int | None, int | None]]:
    """(resource type, Fasten's count, ingested count) for each type either side names."""
    expected = {k: _int(v) for k, v in (export.stats_by_type or {}).items()}
    ingested = {k: _int(v) for k, v in (export.ingested_by_type or {}).items()}
    rows = [(t, expected.get(t), ingested.get(t)) for t in sorted(set(expected) | set(ingested))]
    return [("(total)", export.stats_total, export.ingested_total), *rows]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _report_items(report: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The data-quality report flattened to (key, value) lines; values are counts and
    resource types produced by the ingester, never resource contents."""
    if not report:
        return []
    items: list[tuple[str, str]] = []
    for key, value in report.items():
        if isinstance(value, dict | list):
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        else:
            text = str(value)
        items.append((str(key), text if len(text) <= 400 else text[:400] + "…"))
    return items


@dataclass
class ConnectionPage:
    connection: Connection
    events: Sequence[InboxEvent]
    exports: list[ExportView]
    resources: list[tuple[str, int]]
    runs: Sequence[IngestRun] = ()
    quarantine_counts: dict[str, int] = field(default_factory=dict)
    quarantine: Sequence[IngestError] = ()

    @property
    def resources_total(self) -> int:
        return sum(n for _, n in self.resources)


def connection_page(session: Session, connection: Connection) -> ConnectionPage:
    exports = repo.connection_exports(session, connection.id)
    errors = repo.ingest_error_counts(session, [e.id for e in exports])
    return ConnectionPage(
        connection=connection,
        events=repo.connection_events(session, connection.org_connection_id),
        exports=[
            ExportView(
                export=e,
                ingest_errors=errors.get(e.id, 0),
                reconciliation=_reconciliation(e),
                report_items=_report_items(e.report),
                retryable=e.status in repo.EXPORT_RETRYABLE,
            )
            for e in exports
        ],
        resources=repo.resources_by_type(session, connection.id),
        runs=quarantine.list_runs(session, connection.id, 10),
        quarantine_counts=quarantine.count_errors(session, connection.id),
        quarantine=quarantine.list_errors(session, connection.id, limit=50),
    )


def pretty_resource(row: repo.ResourceRow) -> str:
    """The resource indented for reading, or its first bytes when it is too large."""
    if row.size <= len(row.head):
        try:
            return orjson.dumps(orjson.loads(row.head), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            return row.head.decode("utf-8", errors="replace")
    text = row.head.decode("utf-8", errors="replace")
    return f"{text}\n… (first {len(row.head)} of {row.size} bytes)"


# -- actions ------------------------------------------------------------------------------


class ActionError(Exception):
    """A button's action that cannot be done (shown to the operator as is)."""


def replay(ctx: AppContext, ids: Sequence[int]) -> int:
    from ehi_bridge.webhooks.service import replay_events

    count = replay_events(ctx.db, list(ids))
    return count


def request_export(ctx: AppContext, connection_id: str) -> Export:
    from ehi_bridge.exports import service as exports_service

    try:
        export = exports_service.request_export(ctx.db, connection_id, trigger="manual")
    except LookupError as exc:
        raise ActionError("no such connection") from exc
    except exports_service.ExportNotAllowed as exc:
        raise ActionError(str(exc)) from exc
    return export


def retry_export(ctx: AppContext, export_id: int) -> Export:
    from ehi_bridge.exports import service as exports_service

    try:
        export = exports_service.retry_export(ctx.db, export_id)
    except LookupError as exc:
        raise ActionError("no such export") from exc
    except exports_service.ExportNotAllowed as exc:
        raise ActionError(str(exc)) from exc
    return export
