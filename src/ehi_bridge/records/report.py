"""The report of one ingest run and its reconciliation against the export's counts.

Pure: no I/O. Statuses: ``complete``; ``conflicts`` (every line stored, but keys repeated in
the file with different content: each version kept, see :mod:`ehi_bridge.records.ingest`);
``partial`` (rejected lines, or counts that differ from what the export announced).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass
class IngestReport:
    """Outcome of one ingest and its data-quality check against the export's stats."""

    connection_id: str
    export_id: int | None
    run_id: int | None = None
    source: str = "import"
    lines: int = 0  # non-blank lines (or Bundle entries) read
    resources: int = 0  # distinct (resource_type, resource_id) keys ingested
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0  # extra lines repeating a key already seen in the file
    exact_repeats: int = 0  # ... with the same content as the key's previous occurrence
    conflicts: int = 0  # ... with different content: stored as a new version
    conflict_samples: list[dict[str, Any]] = field(default_factory=list)
    duplicate_key_lines: int = 0  # stored lines with a JSON key twice in one object
    errors: int = 0  # rejected lines, kept in the quarantine (ingest_errors)
    by_type: dict[str, int] = field(default_factory=dict)
    duplicates_by_type: dict[str, int] = field(default_factory=dict)
    expected_total: int | None = None
    expected_by_type: dict[str, int] | None = None
    status: Literal["complete", "conflicts", "partial"] = "complete"
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    error_samples: list[dict[str, Any]] = field(default_factory=list)  # line and reason only
    bundle: dict[str, Any] | None = None  # a Bundle file's own id, type, timestamp, total
    bytes_read: int = 0
    seconds: float = 0.0
    parser_peak_rss_kib: int = 0  # high-water RSS of the parser process

    @property
    def complete(self) -> bool:
        """Everything stored and counted as announced (conflicting repeats included:
        every version is stored; ``status`` says ``conflicts`` so they stay visible)."""
        return self.status != "partial"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reconcile(report: IngestReport) -> None:
    """Compare what was ingested with what the export announced; set status/mismatches.

    A count matches when it equals the distinct keys ingested, or the valid lines (in
    case the announcer counted a repeated key twice). Any malformed line makes the
    ingest ``partial`` too.
    """
    mismatches: list[dict[str, Any]] = []
    if report.expected_total is not None:
        accepted = {report.resources, report.resources + report.duplicates}
        if report.expected_total not in accepted:
            mismatches.append(
                {
                    "resource_type": None,
                    "expected": report.expected_total,
                    "ingested": report.resources,
                }
            )
    if report.expected_by_type is not None:
        for rtype in sorted(set(report.expected_by_type) | set(report.by_type)):
            expected = int(report.expected_by_type.get(rtype, 0))
            got = report.by_type.get(rtype, 0)
            if expected not in (got, got + report.duplicates_by_type.get(rtype, 0)):
                mismatches.append({"resource_type": rtype, "expected": expected, "ingested": got})
    report.mismatches = mismatches
    if mismatches or report.errors:
        report.status = "partial"
    else:
        report.status = "conflicts" if report.conflicts else "complete"


def summarise(report: IngestReport, summary: dict[str, Any]) -> None:
    """Fill ``report`` from the parser process's end-of-file summary."""
    report.lines = summary["lines"]
    report.errors = summary["errors"]
    report.error_samples = [
        {"line": line, "reason": reason} for line, reason in summary["error_samples"]
    ]
    report.by_type = summary["by_type"]
    report.duplicates_by_type = summary["repeats_by_type"]
    report.resources = sum(report.by_type.values())
    report.duplicates = sum(report.duplicates_by_type.values())
    report.exact_repeats = summary["exact_repeats"]
    report.conflicts = summary["conflicts"]
    report.conflict_samples = [
        {"resource_type": t, "resource_id": i, "previous_line": before, "line": line}
        for t, i, before, line in summary["conflict_samples"]
    ]
    report.duplicate_key_lines = summary["duplicate_key_lines"]
    report.bundle = summary["bundle"]
    report.parser_peak_rss_kib = summary["peak_rss_kib"]
