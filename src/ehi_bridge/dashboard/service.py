"""What the dashboard pages show and the actions its buttons take (no HTTP here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy.orm import Session

from ehi_bridge.connections import repository as connections_repo
from ehi_bridge.connections.models import Connection
from ehi_bridge.dashboard import repository as repo
from ehi_bridge.dashboard.fhir_text import describe, human_name
from ehi_bridge.db.base import utcnow
from ehi_bridge.deps import AppContext
from ehi_bridge.exports import repository as exports_repo
from ehi_bridge.exports import service as exports_service
from ehi_bridge.exports.models import Export
from ehi_bridge.records import quarantine
from ehi_bridge.records.models import IngestError, IngestRun
from ehi_bridge.webhooks.models import InboxEvent
from ehi_bridge.webhooks.service import replay_events

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
    report: ReportView
    retryable: bool


def _reconciliation(export: Export) -> list[tuple[str, int | None, int | None]]:
    """(resource type, Fasten's count, ingested count) for each type either side names."""
    expected = {k: _int(v) for k, v in (export.stats_by_type or {}).items()}
    ingested = {k: _int(v) for k, v in (export.ingested_by_type or {}).items()}
    rows = [(t, expected.get(t), ingested.get(t)) for t in sorted(set(expected) | set(ingested))]
    return [("(total)", export.stats_total, export.ingested_total), *rows]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


REPORT_FACTS = (
    ("status", "status"),
    ("lines", "lines read"),
    ("resources", "resources"),
    ("inserted", "new"),
    ("updated", "changed"),
    ("unchanged", "unchanged"),
    ("duplicates", "repeated in the file"),
    ("errors", "lines not ingested"),
    ("expected_total", "Fasten's total"),
    ("bytes_read", "bytes read"),
    ("seconds", "seconds"),
)
# Shown elsewhere on the page (ids; per-type counts in the reconciliation table) or internal.
REPORT_SKIPPED = frozenset(
    {"connection_id", "export_id", "by_type", "expected_by_type", "parser_peak_rss_kib"}
)


@dataclass
class ReportView:
    """The ingester's data-quality report as small tables. Values are counts, resource types
    and line numbers with the parser's reason, never resource contents."""

    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.facts or self.tables)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= 200 else text[:200] + "…"


def _report_view(report: dict[str, Any] | None) -> ReportView:
    view = ReportView()
    if not report:
        return view
    labels = dict(REPORT_FACTS)
    known = [key for key, _ in REPORT_FACTS if report.get(key) is not None]
    view.facts = [(labels[key], _cell(report[key])) for key in known]
    duplicates = report.get("duplicates_by_type")
    if isinstance(duplicates, dict) and duplicates:
        rows = [[str(t), _cell(n)] for t, n in sorted(duplicates.items())]
        view.tables.append(("Repeated in the file, by type", ["type", "lines"], rows))
    mismatches = report.get("mismatches")
    if isinstance(mismatches, list) and mismatches:
        rows = [
            [
                str(m.get("resource_type") or "(total)"),
                _cell(m.get("expected")),
                _cell(m.get("ingested")),
            ]
            for m in mismatches
            if isinstance(m, dict)
        ]
        view.tables.append(
            ("Counts that differ from Fasten's", ["type", "Fasten", "ingested"], rows)
        )
    samples = report.get("error_samples")
    if isinstance(samples, list) and samples:
        rows = [
            [_cell(e.get("line")), _cell(e.get("reason"))] for e in samples if isinstance(e, dict)
        ]
        view.tables.append(("Lines not ingested (first ones)", ["line", "reason"], rows))
    handled = {key for key, _ in REPORT_FACTS} | REPORT_SKIPPED
    handled |= {"duplicates_by_type", "mismatches", "error_samples"}
    for key, value in sorted(report.items()):  # anything a newer ingester adds
        if key in handled or value is None:
            continue
        if isinstance(value, dict):
            rows = [[str(k), _cell(v)] for k, v in sorted(value.items())]
            view.tables.append((str(key).replace("_", " "), ["key", "value"], rows))
        elif isinstance(value, list):
            view.facts.append((str(key).replace("_", " "), ", ".join(_cell(v) for v in value)))
        else:
            view.facts.append((str(key).replace("_", " "), _cell(value)))
    return view


@dataclass
class ConnectionPage:
    connection: Connection
    events: Sequence[InboxEvent]
    exports: list[ExportView]
    resources: list[tuple[str, int]]
    runs: Sequence[IngestRun] = ()
    quarantine_counts: dict[str, int] = field(default_factory=dict)
    quarantine: Sequence[IngestError] = ()
    patient_name: str = ""
    patient_birth_date: str = ""

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
                report=_report_view(e.report),
                retryable=e.status in repo.EXPORT_RETRYABLE,
            )
            for e in exports
        ],
        resources=repo.resources_by_type(session, connection.id),
        runs=quarantine.list_runs(session, connection.id, 10),
        quarantine_counts=quarantine.count_errors(session, connection.id),
        quarantine=quarantine.list_errors(session, connection.id, limit=50),
        **_patient_facts(repo.patient_resource(session, connection.id)),
    )


def _patient_facts(raw: bytes | None) -> dict[str, str]:
    """Name and birth date of the stored Patient resource (an audited read)."""
    if raw is None:
        return {}
    try:
        resource = orjson.loads(raw)
    except orjson.JSONDecodeError:  # larger than the preview: not worth a second read
        return {}
    if not isinstance(resource, dict):
        return {}
    birth = resource.get("birthDate")
    return {
        "patient_name": human_name(resource),
        "patient_birth_date": birth if isinstance(birth, str) else "",
    }


def record_summary(row: repo.ResourceRow) -> tuple[str, str]:
    """(display text, date) of a stored resource for the records list."""
    if row.size > len(row.head):
        return "", row.last_updated or ""
    try:
        text, date = describe(orjson.loads(row.head))
    except orjson.JSONDecodeError:
        return "", row.last_updated or ""
    return text, date or row.last_updated or ""


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
    count = replay_events(ctx.db, list(ids))
    return count


def request_export(ctx: AppContext, connection_id: str) -> Export:
    try:
        export = exports_service.request_export(ctx.db, connection_id, trigger="manual")
    except LookupError as exc:
        raise ActionError("no such connection") from exc
    except exports_service.ExportNotAllowed as exc:
        raise ActionError(str(exc)) from exc
    return export


def resync_source(ctx: AppContext, connection_id: str) -> int:
    """A new sync of a direct (SMART) connection; the background runtime runs it (the
    export's outbox row is written with it). The new export's id."""
    with ctx.db.session() as session:
        connection = connections_repo.find(session, connection_id)
        if connection is None:
            raise ActionError("no such connection")
        if connection.source != "smart":
            raise ActionError("only a direct connection can be synced again here")
        if connection.status != "authorized":
            raise ActionError(f"the connection is {connection.status}: the patient must reconnect")
        if exports_repo.active_for_connection(session, connection.id):
            raise ActionError("a sync of this connection is already in progress")
        export = exports_repo.create(session, connection.id, trigger="manual", source="smart")
        return export.id


def retry_export(ctx: AppContext, export_id: int) -> Export:
    try:
        export = exports_service.retry_export(ctx.db, export_id)
    except LookupError as exc:
        raise ActionError("no such export") from exc
    except exports_service.ExportNotAllowed as exc:
        raise ActionError(str(exc)) from exc
    return export
