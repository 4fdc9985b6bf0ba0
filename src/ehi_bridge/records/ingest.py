"""Ingest an export file into ``resources``: streamed, batched, idempotent, reconciled.

A child process (:mod:`ehi_bridge.records.parse_worker`, a fresh interpreter) reads and
parses the file and sends chunks of parsed records through a pipe; a thread here decodes
them a little ahead, and the calling thread writes them: one transaction per batch, so a
crash loses at most the batch in flight and a re-run (upserts keyed by
``(connection_id, resource_type, resource_id)``) ends with exactly one row per key. The
pipe and a bounded hand-over keep memory bounded; the child is killed and reaped when the
ingest ends for any reason.

Counts are judged against what was stored before the run: ``inserted`` (new key),
``updated`` (content hash differs; ``version`` + 1), ``unchanged`` (same hash; no write).
A key repeated in one file: the last occurrence wins, it is counted once, and
``duplicates`` counts the extra lines. Re-ingesting a file therefore writes nothing.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import marshal
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final, Literal

import structlog
from sqlalchemy import RootTransaction

from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.records.parse_worker import FRAME_HEADER, write_frame
from ehi_bridge.records.repository import ResourceWriter, RunJournal
from ehi_bridge.records.seen import Key

log = structlog.get_logger(__name__)

BATCH_ROWS: Final = 5000  # rows per transaction
BATCH_BYTES: Final = 8 * 1024 * 1024  # or resource bytes per transaction
CHUNK_ROWS: Final = 500  # rows per hand-over from the parser process
CHUNK_BYTES: Final = 512 * 1024  # or resource bytes per hand-over
PIPE_BYTES: Final = 1024 * 1024
PREFETCH_FRAMES: Final = 4  # decoded chunks in this process: 3 waiting + 1 being written
PREFETCH_BYTES: Final = 4 * 1024 * 1024  # or their frame bytes (one larger frame alone)
# PostgreSQL writes whole batches: let the next batch arrive while one is being written.
PG_PREFETCH_FRAMES: Final = 64
PG_PREFETCH_BYTES: Final = 2 * BATCH_BYTES


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
    parser_peak_rss_kib: int = 0  # high-water RSS of the parser process

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


# A parsed record as the parser process sends it (see parse_worker):
# (resource_type, resource_id, raw, content_hash, last_updated, patient_ref, repeat)
Record = tuple[str, str, bytes, bytes, str | None, str | None, bool]


class ParserProcessError(RuntimeError):
    """The parser process failed or ended without finishing the file."""


def _package_root() -> str:
    import ehi_bridge

    return str(Path(ehi_bridge.__file__).resolve().parents[1])


def _start_parser() -> subprocess.Popen[bytes]:
    """A parser interpreter that boots and then waits for its arguments on stdin."""
    env = dict(os.environ)
    root = _package_root()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "ehi_bridge.records.parse_worker", "--wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        close_fds=True,
        # Its own session: a terminal's Ctrl-C (sent to the whole foreground group) stops
        # only the parent, which ends this process; a parser still importing would otherwise
        # print a KeyboardInterrupt traceback.
        start_new_session=True,
    )


class _ReadyParser:
    """At most one parser booted ahead of need, once :func:`keep_parser_ready` was called
    (by the service, whose ingests then skip the ~40 ms an interpreter takes to start).
    A waiting parser exits when this process does (its stdin reaches end of input)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: subprocess.Popen[bytes] | None = None
        self._keep = False

    def keep(self) -> None:
        with self._lock:
            self._keep = True
            if self._ready is None or self._ready.poll() is not None:
                self._ready = _start_parser()

    def take(self) -> subprocess.Popen[bytes]:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None or ready.poll() is not None:
            if ready is not None:
                ready.wait()
            ready = _start_parser()
        return ready

    def replenish(self) -> None:
        """After an ingest (not during it: booting takes CPU from the ingest)."""
        with self._lock:
            if self._keep and self._ready is None:
                self._ready = _start_parser()

    def stop(self) -> None:
        with self._lock:
            ready, self._ready, self._keep = self._ready, None, False
        if ready is not None:
            _discard(ready)


def _discard(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


_ready_parser = _ReadyParser()


def keep_parser_ready() -> None:
    """Keep one parser process booted and waiting for the next ingest (the service)."""
    _ready_parser.keep()


def stop_ready_parser() -> None:
    _ready_parser.stop()


class _ParserProcess:
    """``python -m ehi_bridge.records.parse_worker`` on one file, read frame by frame.

    A fresh interpreter (``subprocess``, i.e. fork+exec / posix_spawn: nothing of this
    threaded process is copied into it). The pipe between us holds at most
    ``PIPE_BYTES`` and the child blocks on a full pipe; here at most ``prefetch_frames`` /
    ``prefetch_bytes`` of decoded chunks are held (see :meth:`_read_frames`). :meth:`close`
    kills the child if it is still running (an error or cancellation here) and reaps it;
    if this process dies instead, the child's next write fails and it exits.
    """

    def __init__(
        self,
        path: Path,
        batch_rows: int,
        prefetch_frames: int = PREFETCH_FRAMES,
        prefetch_bytes: int = PREFETCH_BYTES,
    ) -> None:
        self._prefetch_frames = prefetch_frames
        self._prefetch_bytes = prefetch_bytes
        self._proc = _ready_parser.take()
        assert self._proc.stdin is not None
        arguments = (str(path), batch_rows, BATCH_BYTES, CHUNK_ROWS, CHUNK_BYTES)
        try:
            write_frame(self._proc.stdin, arguments)
            self._proc.stdin.close()
        except OSError as exc:
            _discard(self._proc)
            raise ParserProcessError("ingest parser process did not start") from exc
        assert self._proc.stdout is not None
        self._out: IO[bytes] = self._proc.stdout
        # Linux: room for a whole chunk, so the child rarely waits on us.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._out.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._frames: queue.SimpleQueue[Any] = queue.SimpleQueue()  # bounded by _held
        self._held: deque[int] = deque()  # sizes of the frames read and not yet written
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._reader = threading.Thread(target=self._read_frames, name="ingest-frames", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read(self, n: int) -> bytes:
        data = self._out.read(n)
        if len(data) != n:
            code = self._proc.wait()
            raise ParserProcessError(f"ingest parser process ended early (exit status {code})")
        return data

    def _read_frames(self) -> None:
        """Reader thread: frames decoded ahead of the writer, while it waits on SQLite or an
        fsync. Frames held here (queued or being written) stay within ``prefetch_frames``
        and ``prefetch_bytes``; a larger frame is read only when nothing else is held, so a
        100 MB line is in this process once (and waits in the pipe and the child meanwhile).
        """
        try:
            while True:
                (size,) = FRAME_HEADER.unpack(self._read(FRAME_HEADER.size))
                with self._cond:
                    while self._held and (
                        len(self._held) >= self._prefetch_frames
                        or sum(self._held) + size > self._prefetch_bytes
                    ):
                        if self._stopping.is_set():
                            return
                        self._cond.wait(0.1)
                    self._held.append(size)
                # Our own child's output; marshal builds data objects only (no code runs).
                frame = marshal.loads(self._read(size))  # noqa: S302
                if not isinstance(frame, tuple) or not frame:  # pragma: no cover - protocol
                    raise ParserProcessError("unexpected frame from the ingest parser process")
                self._frames.put(frame)
                if frame[0] in ("d", "x"):
                    return
        except BaseException as exc:  # handed to the writer, which re-raises it
            self._frames.put(exc)

    def frames(self) -> Iterator[tuple[Any, ...]]:
        while True:
            item = self._frames.get()
            if isinstance(item, BaseException):
                raise item
            yield item  # the writer works on it until it asks for the next one
            with self._cond:
                self._held.popleft()
                self._cond.notify_all()
            if item[0] in ("d", "x"):
                return

    def close(self) -> None:
        self._stopping.set()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._reader.join()  # it has read up to the dead child's end of output
        _discard(self._proc)
        _ready_parser.replenish()


def _parser_failure(path: Path, kind: str, errno: int | None, strerror: str | None) -> Exception:
    """The parser process's exception, as far as it can be rebuilt without its message."""
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, OSError) and errno is not None:
        return cls(errno, strerror, str(path))
    if isinstance(cls, type) and issubclass(cls, MemoryError):
        return MemoryError()
    return ParserProcessError(f"ingest parser process failed ({kind})")


class _Counts:
    def __init__(self) -> None:
        self.inserted = 0
        self.updated = 0
        self.unchanged = 0


def _write_batch(
    writer: ResourceWriter,
    journal: RunJournal,
    records: list[Record],
    errors: list[tuple[int, str]],
    *,
    connection_id: str,
    export_id: int | None,
    run_at: datetime,
    run_at_bound: Any,
    fresh: bool,
    counts: _Counts,
) -> None:
    """Write one chunk of records (in the caller's transaction)."""
    if fresh and not any(record[6] for record in records):
        # First ingest of this connection, every key new to the run: nothing to look up.
        writer.insert_new(
            [
                (connection_id, t, i, raw, h, 1, lu, pr, export_id, run_at_bound, False)
                for t, i, raw, h, lu, pr, _ in records
            ]
        )
        counts.inserted += len(records)
        writer.add_errors(connection_id, export_id, errors, run_at)
        return
    # Last occurrence in the chunk wins; keep whether the key was seen before the chunk.
    latest: dict[Key, tuple[Record, bool]] = {}
    for record in records:
        key = (record[0], record[1])
        earlier = latest.get(key)
        latest[key] = (record, record[6] if earlier is None else earlier[1])

    lookup = [key for key, (_, dup) in latest.items() if dup or not fresh]
    stored = writer.lookup(connection_id, lookup) if lookup else {}
    repeated = [key for key, (_, dup) in latest.items() if dup]
    prior = journal.get(repeated) if repeated else {}

    rows: list[tuple[Any, ...]] = []  # may exist: upsert
    new_rows: list[tuple[Any, ...]] = []  # known not to exist: plain insert / COPY
    remember: list[tuple[Key, bytes, int, bool]] = []

    def row(record: Record, version: int) -> tuple[Any, ...]:
        t, i, raw, h, lu, pr, _ = record
        return (connection_id, t, i, raw, h, version, lu, pr, export_id, run_at_bound, False)

    for key, (record, dup) in latest.items():
        current = stored.get(key)
        new_hash = record[3]
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
    writer.add_errors(connection_id, export_id, errors, run_at)
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
    # Started first: the interpreter boots while this process sets up the run.
    if db.is_sqlite:
        parser = _ParserProcess(path, batch_rows)
    else:
        parser = _ParserProcess(path, batch_rows, PG_PREFETCH_FRAMES, PG_PREFETCH_BYTES)
    try:
        with db.engine.connect() as conn:
            writer = ResourceWriter(conn)
            with conn.begin():
                writer.prepare()
                writer.clear_errors(connection_id, export_id)
                fresh = writer.count(connection_id) == 0
            run_at_bound = writer.bind_time(run_at)
            journal = RunJournal()
            tx: RootTransaction | None = None
            chunked = writer.dialect == "sqlite"
            held_records: list[Record] = []
            held_errors: list[tuple[int, str]] = []
            try:
                for frame in parser.frames():
                    kind = frame[0]
                    if kind == "c":
                        _, records, errors, commit, bytes_read = frame
                        held_records.extend(records)
                        held_errors.extend(errors)
                        # SQLite: each chunk into the open transaction as it arrives.
                        # PostgreSQL: the whole batch at once (one COPY, one round trip).
                        if (held_records or held_errors) and (commit or chunked):
                            if tx is None:
                                tx = conn.begin()
                            _write_batch(
                                writer,
                                journal,
                                held_records,
                                held_errors,
                                connection_id=connection_id,
                                export_id=export_id,
                                run_at=run_at,
                                run_at_bound=run_at_bound,
                                fresh=fresh,
                                counts=counts,
                            )
                            held_records, held_errors = [], []
                        if commit:
                            if tx is not None:
                                tx.commit()
                                tx = None
                                writer.committed()
                            report.bytes_read = bytes_read
                            if progress is not None:
                                progress(bytes_read)
                    elif kind == "d":
                        _, lines, error_count, samples, by_type, repeats_by_type, rss = frame
                        report.lines = lines
                        report.errors = error_count
                        report.error_samples = [
                            {"line": line, "reason": reason} for line, reason in samples
                        ]
                        report.by_type = by_type
                        report.duplicates_by_type = repeats_by_type
                        report.resources = sum(by_type.values())
                        report.duplicates = sum(repeats_by_type.values())
                        report.parser_peak_rss_kib = rss
                        break
                    elif kind == "x":
                        raise _parser_failure(path, *frame[1:])
                    else:  # pragma: no cover - protocol
                        raise ParserProcessError(f"unexpected frame kind {kind!r}")
            finally:
                if tx is not None and tx.is_active:
                    tx.rollback()
                journal.close()
                with conn.begin():
                    writer.release()
    finally:
        parser.close()
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
