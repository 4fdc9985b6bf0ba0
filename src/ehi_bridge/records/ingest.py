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
Re-ingesting a file without repeated keys therefore writes nothing.

Versions (what a FHIR server does with successive updates): every distinct version is
stored, in the order received, and the last one is current. A key repeated in one file is
an *exact repeat* when its content equals the key's previous occurrence (nothing is
written) and a *conflicting repeat* otherwise: the version before it moves to
``resource_versions`` and it becomes the current row with ``version`` + 1 (so A, B, A
gives versions 1, 2, 3). Both are listed in the quarantine with their line and the line
of the version they repeat; ``duplicates`` counts both, ``exact_repeats`` and
``conflicts`` each. A run with conflicting repeats ends with status ``conflicts`` (not
``complete``), which the CLI, the API and the dashboard show. Re-ingesting such a file
adds its versions again (each differs from the one before it).

Rejected lines are kept in the quarantine with their bytes (up to ``quarantine_bytes``,
cut with ``truncated`` set), their line and reason, under this run.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import fcntl
import marshal
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import structlog
from sqlalchemy import RootTransaction

from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.records.parse_worker import FRAME_HEADER, write_frame
from ehi_bridge.records.parser_process import (
    BATCH_BYTES,
    BATCH_ROWS,
    QUARANTINE_BYTES,
    discard,
    parser_arguments,
)
from ehi_bridge.records.parser_process import ready_parser as _ready_parser
from ehi_bridge.records.quarantine import Issue, Rejected, add_rows, finish_run, start_run
from ehi_bridge.records.report import IngestReport, reconcile, summarise
from ehi_bridge.records.seen import Key
from ehi_bridge.records.writer import ResourceWriter

log = structlog.get_logger(__name__)

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
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 1024 * 1024)
    except (OSError, AttributeError):
        pass


# A parsed record as the parser process sends it (see parse_worker): (resource_type,
# resource_id, raw, content_hash, last_updated, patient_ref, conflict, line, entry_meta)
Record = tuple[str, str, bytes, bytes, str | None, str | None, bool, int, str | None]


class ParserProcessError(RuntimeError):
    """The parser process failed or ended without finishing the file."""


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
        quarantine_bytes: int,
        prefetch_frames: int = PREFETCH_FRAMES,
        prefetch_bytes: int = PREFETCH_BYTES,
    ) -> None:
        self._prefetch_frames = prefetch_frames
        self._prefetch_bytes = prefetch_bytes
        arguments = parser_arguments(path, batch_rows, quarantine_bytes)
        started = _ready_parser.take_started(arguments)
        if started is not None:  # already parsing this file (ehi-bridge import)
            self._proc = started
        else:
            self._proc = _ready_parser.take()
            assert self._proc.stdin is not None
            try:
                write_frame(self._proc.stdin, arguments)
                self._proc.stdin.close()
            except OSError as exc:
                discard(self._proc)
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
        discard(self._proc)
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
    records: list[Record],
    *,
    connection_id: str,
    export_id: int | None,
    run_at: datetime,
    run_at_bound: Any,
    fresh: bool,
    counts: _Counts,
) -> None:
    """Write one chunk of records (in the caller's transaction); see the module docstring
    for versions."""

    def row(record: Record, version: int) -> tuple[Any, ...]:
        t, i, raw, h, lu, pr, _, _, meta = record
        return (connection_id, t, i, raw, h, version, lu, pr, export_id, run_at_bound, False, meta)

    if fresh and not any(record[6] for record in records):
        # First ingest of this connection, every key new: nothing to look up.
        writer.insert_new([row(record, 1) for record in records])
        counts.inserted += len(records)
        return
    groups: dict[Key, list[Record]] = {}
    for record in records:
        groups.setdefault((record[0], record[1]), []).append(record)
    stored = writer.lookup(connection_id, list(groups))
    new_rows: list[tuple[Any, ...]] = []  # known not to exist: plain insert / COPY
    rows: list[tuple[Any, ...]] = []  # replace a stored row
    archive: list[Key] = []  # stored rows to keep as an earlier version first
    history: list[dict[str, Any]] = []  # versions that never were the stored row
    for key, group in groups.items():
        current = stored.get(key)
        version = current.version if current is not None else 0
        current_hash = current.content_hash if current is not None else None
        latest: Record | None = None  # the version to store, if not the stored row
        for record in group:
            conflict = record[6]
            if current_hash is None:
                version, current_hash, latest = 1, record[3], record
                counts.inserted += 0 if conflict else 1
                continue
            if record[3] == current_hash:
                counts.unchanged += 0 if conflict else 1
                continue
            if latest is None:
                archive.append(key)
            else:
                t, i, raw, h = latest[0], latest[1], latest[2], latest[3]
                history.append(
                    {
                        "connection_id": connection_id,
                        "resource_type": t,
                        "resource_id": i,
                        "version": version,
                        "raw": raw,
                        "content_hash": h,
                        "export_id": export_id,
                        "ingested_at": run_at,
                    }
                )
            version, current_hash, latest = version + 1, record[3], record
            counts.updated += 0 if conflict else 1
        if latest is not None:
            (new_rows if current is None and version == 1 else rows).append(row(latest, version))
    writer.archive(connection_id, archive)
    writer.add_versions(history)
    writer.insert_new(new_rows)
    writer.upsert(rows)


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
    source: str | None = None,
    quarantine_bytes: int = QUARANTINE_BYTES,
) -> IngestReport:
    """Store every resource of an NDJSON (or Bundle) file for ``connection_id``.

    ``connection_id`` must exist (``connections.id``). ``progress`` receives the number
    of bytes read so far. ``source`` names the run (default ``export`` with an export id,
    else ``import``). Rejected lines go to the quarantine under this run.
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
        source=source or ("export" if export_id is not None else "import"),
        expected_total=expected_total,
        expected_by_type=dict(expected_by_type) if expected_by_type is not None else None,
    )
    counts = _Counts()
    log.info("ingest.start", connection_id=connection_id, export_id=export_id)
    # Started first: the interpreter boots while this process sets up the run.
    if db.is_sqlite:
        parser = _ParserProcess(path, batch_rows, quarantine_bytes)
    else:
        parser = _ParserProcess(
            path, batch_rows, quarantine_bytes, PG_PREFETCH_FRAMES, PG_PREFETCH_BYTES
        )
    try:
        with db.engine.connect() as conn:
            writer = ResourceWriter(conn)
            with conn.begin():
                writer.prepare()
                run_id = start_run(conn, connection_id, export_id, report.source, run_at)
                fresh = writer.count(connection_id) == 0
            report.run_id = run_id
            run_at_bound = writer.bind_time(run_at)
            tx: RootTransaction | None = None
            chunked = writer.dialect == "sqlite"
            held_records: list[Record] = []
            held_errors: list[Rejected] = []
            held_issues: list[Issue] = []
            try:
                for frame in parser.frames():
                    kind = frame[0]
                    if kind == "c":
                        _, records, errors, issues, commit, bytes_read = frame
                        held_records.extend(records)
                        held_errors.extend(errors)
                        held_issues.extend(issues)
                        # SQLite: each chunk into the open transaction as it arrives.
                        # PostgreSQL: the whole batch at once (one COPY, one round trip).
                        if (held_records or held_errors or held_issues) and (commit or chunked):
                            if tx is None:
                                tx = conn.begin()
                            _write_batch(
                                writer,
                                held_records,
                                connection_id=connection_id,
                                export_id=export_id,
                                run_at=run_at,
                                run_at_bound=run_at_bound,
                                fresh=fresh,
                                counts=counts,
                            )
                            add_rows(
                                conn,
                                run_id=run_id,
                                connection_id=connection_id,
                                export_id=export_id,
                                rejected=held_errors,
                                issues=held_issues,
                                limit_bytes=quarantine_bytes,
                                at=run_at,
                            )
                            held_records, held_errors, held_issues = [], [], []
                        if commit:
                            if tx is not None:
                                tx.commit()
                                tx = None
                                writer.committed()
                            report.bytes_read = bytes_read
                            if progress is not None:
                                progress(bytes_read)
                    elif kind == "d":
                        summarise(report, frame[1])
                        break
                    elif kind == "x":
                        raise _parser_failure(path, *frame[1:])
                    else:  # pragma: no cover - protocol
                        raise ParserProcessError(f"unexpected frame kind {kind!r}")
            finally:
                if tx is not None and tx.is_active:
                    tx.rollback()
                with conn.begin():
                    writer.release()
            report.inserted = counts.inserted
            report.updated = counts.updated
            report.unchanged = counts.unchanged
            report.seconds = round(time.monotonic() - started, 3)
            reconcile(report)
            with conn.begin():
                finish_run(conn, run_id, report.status, report.as_dict(), utcnow())
    finally:
        parser.close()
    log.info(
        "ingest.done",
        connection_id=connection_id,
        export_id=export_id,
        run_id=report.run_id,
        status=report.status,
        resources=report.resources,
        inserted=report.inserted,
        updated=report.updated,
        unchanged=report.unchanged,
        duplicates=report.duplicates,
        conflicts=report.conflicts,
        errors=report.errors,
        mismatches=len(report.mismatches),
        seconds=report.seconds,
    )
    return report
