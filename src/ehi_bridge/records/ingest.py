"""Ingest an export file into ``resources``: streamed, batched, idempotent, reconciled.

One thread reads and parses the file (:mod:`ehi_bridge.records.ndjson`) and hands batches
through a small bounded queue to the calling thread, which writes them: one transaction
per batch, so a crash loses at most the batch in flight and a re-run (upserts keyed by
``(connection_id, resource_type, resource_id)``) ends with exactly one row per key.

Counts are judged against what was stored before the run: ``inserted`` (new key),
``updated`` (content hash differs; ``version`` + 1), ``unchanged`` (same hash; no write).
A key repeated in one file: the last occurrence wins, it is counted once, and
``duplicates`` counts the extra lines. Re-ingesting a file therefore writes nothing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.records.ndjson import ParsedResource, ParseError, iter_records
from ehi_bridge.records.repository import Key, ResourceWriter, RunJournal, SeenKeys

log = structlog.get_logger(__name__)

BATCH_ROWS: Final = 5000
BATCH_BYTES: Final = 8 * 1024 * 1024
QUEUE_BATCHES: Final = 3
QUEUE_BYTES: Final = 3 * BATCH_BYTES
READ_BUFFER: Final = 1024 * 1024
MAX_ERRORS_IN_REPORT: Final = 50


_malloc_tuned = False


def _return_large_blocks_to_the_os() -> None:
    """glibc raises its mmap threshold (up to 32 MiB) after large blocks are freed, and
    then keeps such blocks in per-thread heaps: after a few 20 MB lines the process holds
    ~60 MB it no longer uses. A fixed 1 MiB threshold hands them back. Process-wide,
    harmless elsewhere, done once; a no-op off glibc."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 1024 * 1024)
    except (OSError, AttributeError):
        pass


@dataclass
class IngestReport:
    """Outcome of one ingest and its data-quality check against the export's stats."""

    connection_id: str
    export_id: int | None
    lines: int = 0  # non-blank lines (or Bundle entries) read
    resources: int = 0  # distinct (resource_type, resource_id) keys ingested
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0  # extra lines repeating a key already seen in the file
    errors: int = 0  # malformed lines, recorded in ingest_errors
    by_type: dict[str, int] = field(default_factory=dict)
    duplicates_by_type: dict[str, int] = field(default_factory=dict)
    expected_total: int | None = None
    expected_by_type: dict[str, int] | None = None
    status: Literal["complete", "partial"] = "complete"
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    error_samples: list[dict[str, Any]] = field(default_factory=list)  # line and reason only
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.status == "complete"

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
    report.status = "complete" if not mismatches and report.errors == 0 else "partial"


@dataclass
class _Batch:
    records: list[tuple[ParsedResource, bool]] = field(default_factory=list)  # (record, dup)
    errors: list[tuple[int, str]] = field(default_factory=list)
    size: int = 0
    repeats: bool = False  # some key occurs twice in this batch or occurred before it


class _Stop(Exception):
    pass


class _Handoff:
    """The bounded hand-over from the parser thread to the writer: at most
    ``QUEUE_BATCHES`` batches and ``QUEUE_BYTES`` of resource bytes wait (a single batch
    larger than that waits alone), so memory stays bounded even with 100 MB lines."""

    def __init__(self, stop: threading.Event) -> None:
        self._items: deque[tuple[Any, int]] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._stop = stop

    def put(self, item: Any, size: int = 0) -> None:
        with self._cond:
            while self._items and (
                len(self._items) >= QUEUE_BATCHES or self._bytes + size > QUEUE_BYTES
            ):
                if self._stop.is_set():
                    raise _Stop
                self._cond.wait(0.2)
            if self._stop.is_set():
                raise _Stop
            self._items.append((item, size))
            self._bytes += size
            self._cond.notify_all()

    def get(self) -> Any:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item, size = self._items.popleft()
            self._bytes -= size
            self._cond.notify_all()
            return item


def _mark_repeats(
    seen: SeenKeys,
    pending: list[ParsedResource],
    batch: _Batch,
    by_type: Counter[str],
    dup_by_type: Counter[str],
) -> None:
    """Tag each record with whether its key already occurred earlier in the file."""
    if not pending:
        return
    firsts = seen.add_batch([(r.resource_type, r.resource_id) for r in pending])
    for record, first in zip(pending, firsts, strict=True):
        if first:
            by_type[record.resource_type] += 1
        else:
            dup_by_type[record.resource_type] += 1
            batch.repeats = True
        batch.records.append((record, not first))


def _parse_into(
    path: Path,
    q: _Handoff,
    report: IngestReport,
    progress: Callable[[int], None] | None,
    batch_rows: int,
) -> None:
    """Parser thread: file → batches of (record, seen-before-in-this-file) and errors."""
    seen = SeenKeys()
    by_type: Counter[str] = Counter()
    dup_by_type: Counter[str] = Counter()
    try:
        with path.open("rb", buffering=READ_BUFFER) as stream:
            batch = _Batch()
            pending: list[ParsedResource] = []
            for item in iter_records(stream):
                report.lines += 1
                if isinstance(item, ParseError):
                    batch.errors.append((item.line_number, item.reason))
                    report.errors += 1
                    if len(report.error_samples) < MAX_ERRORS_IN_REPORT:
                        report.error_samples.append(
                            {"line": item.line_number, "reason": item.reason}
                        )
                else:
                    pending.append(item)
                    batch.size += len(item.raw)
                if (
                    len(pending) >= batch_rows
                    or batch.size >= BATCH_BYTES
                    or len(batch.errors) >= batch_rows
                ):
                    _mark_repeats(seen, pending, batch, by_type, dup_by_type)
                    pending = []
                    q.put(batch, batch.size)
                    batch = _Batch()
                    report.bytes_read = stream.tell()
                    if progress is not None:
                        progress(report.bytes_read)
            _mark_repeats(seen, pending, batch, by_type, dup_by_type)
            q.put(batch, batch.size)
            report.bytes_read = stream.tell()
            if progress is not None:
                progress(report.bytes_read)
        report.by_type = dict(sorted(by_type.items()))
        report.duplicates_by_type = dict(sorted(dup_by_type.items()))
        report.resources = sum(by_type.values())
        report.duplicates = sum(dup_by_type.values())
        q.put(None)
    except _Stop:
        return
    except BaseException as exc:  # handed to the writer, which re-raises it
        try:
            q.put(exc)
        except _Stop:
            return
    finally:
        seen.close()


class _Counts:
    def __init__(self) -> None:
        self.inserted = 0
        self.updated = 0
        self.unchanged = 0


def _write_batch(
    writer: ResourceWriter,
    journal: RunJournal,
    batch: _Batch,
    *,
    connection_id: str,
    export_id: int | None,
    run_at: datetime,
    run_at_bound: Any,
    fresh: bool,
    counts: _Counts,
) -> None:
    if fresh and not batch.repeats:
        # First ingest of this connection, every key new to the run: nothing to look up.
        writer.insert_new(
            [
                (
                    connection_id,
                    r.resource_type,
                    r.resource_id,
                    r.raw,
                    r.content_hash,
                    1,
                    r.last_updated,
                    r.patient_ref,
                    export_id,
                    run_at_bound,
                    False,
                )
                for r, _ in batch.records
            ]
        )
        counts.inserted += len(batch.records)
        writer.add_errors(connection_id, export_id, batch.errors, run_at)
        return
    # Last occurrence in the batch wins; keep whether the key was seen before the batch.
    latest: dict[Key, tuple[ParsedResource, bool]] = {}
    for record, dup in batch.records:
        key = (record.resource_type, record.resource_id)
        earlier = latest.get(key)
        latest[key] = (record, dup if earlier is None else earlier[1])

    lookup = [key for key, (_, dup) in latest.items() if dup or not fresh]
    stored = writer.lookup(connection_id, lookup) if lookup else {}
    repeated = [key for key, (_, dup) in latest.items() if dup]
    prior = journal.get(repeated) if repeated else {}

    rows: list[tuple[Any, ...]] = []  # may exist: upsert
    new_rows: list[tuple[Any, ...]] = []  # known not to exist: plain insert / COPY
    remember: list[tuple[Key, bytes, int, bool]] = []

    def row(record: ParsedResource, version: int) -> tuple[Any, ...]:
        return (
            connection_id,
            record.resource_type,
            record.resource_id,
            record.raw,
            record.content_hash,
            version,
            record.last_updated,
            record.patient_ref,
            export_id,
            run_at_bound,
            False,
        )

    for key, (record, dup) in latest.items():
        current = stored.get(key)
        new_hash = record.content_hash
        if not dup:
            if current is None:
                new_rows.append(row(record, 1))
                counts.inserted += 1
            elif current.content_hash == new_hash:
                counts.unchanged += 1
            else:
                rows.append(row(record, current.version + 1))
                counts.updated += 1
                remember.append((key, current.content_hash, current.version, True))
            continue
        # The key already occurred in an earlier batch of this file.
        if current is None:  # its row vanished meanwhile (purged): store it again
            rows.append(row(record, 1))
            continue
        if new_hash == current.content_hash:
            continue
        before = prior.get(key)
        if before is not None:  # existed before the run and this run rewrote it
            old_hash, old_version, changed = before
            if new_hash == old_hash:
                rows.append(row(record, old_version))  # back to the pre-run content
                if changed:
                    counts.updated -= 1
                    counts.unchanged += 1
                remember.append((key, old_hash, old_version, False))
            else:
                rows.append(row(record, old_version + 1))
                if not changed:
                    counts.unchanged -= 1
                    counts.updated += 1
                remember.append((key, old_hash, old_version, True))
        elif current.ingested_at == run_at:  # inserted by this run
            rows.append(row(record, 1))
        else:  # existed before the run; its first occurrence was unchanged
            rows.append(row(record, current.version + 1))
            counts.unchanged -= 1
            counts.updated += 1
            remember.append((key, current.content_hash, current.version, True))

    writer.insert_new(new_rows)
    writer.upsert(rows)
    writer.add_errors(connection_id, export_id, batch.errors, run_at)
    journal.remember(remember)


def ingest_file(
    db: Database,
    path: Path,
    *,
    connection_id: str,
    export_id: int | None,
    expected_total: int | None = None,
    expected_by_type: dict[str, int] | None = None,
    progress: Callable[[int], None] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> IngestReport:
    """Store every resource of an NDJSON (or Bundle) file for ``connection_id``.

    ``connection_id`` must exist (``connections.id``). ``progress`` receives the number
    of bytes read so far. Malformed lines go to ``ingest_errors`` (line number and reason;
    those of an earlier ingest of the same connection and export are replaced).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    _return_large_blocks_to_the_os()
    started = time.monotonic()
    run_at = utcnow()
    report = IngestReport(
        connection_id=connection_id,
        export_id=export_id,
        expected_total=expected_total,
        expected_by_type=dict(expected_by_type) if expected_by_type is not None else None,
    )
    counts = _Counts()
    log.info("ingest.start", connection_id=connection_id, export_id=export_id)
    with db.engine.connect() as conn:
        writer = ResourceWriter(conn)
        with conn.begin():
            writer.prepare()
            writer.clear_errors(connection_id, export_id)
            fresh = writer.count(connection_id) == 0
        run_at_bound = writer.bind_time(run_at)
        journal = RunJournal()
        stop = threading.Event()
        q = _Handoff(stop)
        parser = threading.Thread(
            target=_parse_into,
            args=(path, q, report, progress, batch_rows),
            name="ingest-parse",
            daemon=True,
        )
        parser.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                with conn.begin():
                    _write_batch(
                        writer,
                        journal,
                        item,
                        connection_id=connection_id,
                        export_id=export_id,
                        run_at=run_at,
                        run_at_bound=run_at_bound,
                        fresh=fresh,
                        counts=counts,
                    )
        finally:
            stop.set()
            parser.join()
            journal.close()
            with conn.begin():
                writer.release()
    report.inserted = counts.inserted
    report.updated = counts.updated
    report.unchanged = counts.unchanged
    report.seconds = round(time.monotonic() - started, 3)
    reconcile(report)
    log.info(
        "ingest.done",
        connection_id=connection_id,
        export_id=export_id,
        status=report.status,
        resources=report.resources,
        inserted=report.inserted,
        updated=report.updated,
        unchanged=report.unchanged,
        duplicates=report.duplicates,
        errors=report.errors,
        mismatches=len(report.mismatches),
        seconds=report.seconds,
    )
    return report
