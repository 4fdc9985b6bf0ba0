"""The ingest's parser process: one export file in, framed batches of parsed records out.

Started by :mod:`ehi_bridge.records.ingest` as ``python -m ehi_bridge.records.parse_worker``
(a fresh interpreter, never a fork of the threaded service), so parsing (orjson, sha256,
the exact repeated-key check) runs on its own core and under its own GIL while the service
process only binds and steps the database.

Protocol, on stdout: frames of an 8-byte little-endian length and a :mod:`marshal` payload
(bytes, str, int, bool, None, tuples, lists and dicts only; no pickle, nothing executable).

- ``("c", records, errors, issues, commit, bytes_read)``: a chunk. ``records`` are tuples
  ``(resource_type, resource_id, raw, content_hash, last_updated, patient_ref, conflict,
  line, entry_meta)`` in file order: each key's first occurrence, and each later
  occurrence whose content differs from the one before it (``conflict`` true: a new
  version). Exact repeats are not sent as records. ``errors`` are rejected lines
  ``(line, reason, kept_bytes, size)``, ``kept_bytes`` cut to the quarantine's limit.
  ``issues`` are ``(kind, line, resource_type, resource_id, previous_line, detail)``,
  kind ``exact_repeat``, ``conflict`` or ``duplicate_keys``. ``commit`` ends a batch
  (one transaction).
- ``("d", summary)``: end of file; ``summary`` is a dict (counts, samples, the Bundle's
  facts, and ``peak_rss_kib``: this process's own high-water RSS, 0 if unknown).
- ``("x", kind, errno, strerror)``: parsing failed (``kind`` is the exception's class
  name; no message, which could quote content).

Frames go out through a thread of their own, up to ``AHEAD_BYTES`` ahead of the pipe: the
parser keeps parsing while the reader is busy (an fsync, or ``ehi-bridge import`` still
starting up: it starts this process on its file first). Memory is bounded by that much
plus one chunk (plus the longest line): past it, handing over a frame blocks until the
thread has written enough. The process ends when its stdout is closed (the reader went
away) or it is killed.

Started with ``--wait`` instead of arguments, it boots (imports) and then waits for them as
one frame on stdin: the service keeps one such parser ready, so an ingest does not wait for
an interpreter to start. End of stdin before that frame: it exits.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import struct
import sys
import threading
from collections import Counter, deque
from typing import IO, Any, Final, Protocol

from ehi_bridge.records.bundle import BundleFacts
from ehi_bridge.records.ndjson import ParsedResource, ParseError, iter_records
from ehi_bridge.records.seen import CONFLICT, EXACT, FIRST, SeenKeys

FRAME_HEADER: Final = struct.Struct("<Q")
MARSHAL_VERSION: Final = 4
READ_BUFFER: Final = 1024 * 1024
MAX_ERRORS_IN_REPORT: Final = 50
AHEAD_BYTES: Final = 48 * 1024 * 1024  # frames parsed ahead of the pipe, at most


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> None: ...


class AheadWriter:
    """Writes frames to ``out`` on a thread, holding at most ``limit`` bytes not yet
    written (a single larger frame alone). A failed write (``BrokenPipeError``: the reader
    went away) is raised on the next :meth:`flush` or :meth:`close`."""

    def __init__(self, out: IO[bytes], limit: int = AHEAD_BYTES) -> None:
        self._out = out
        self._limit = limit
        self._parts: list[bytes] = []
        self._queue: deque[bytes | None] = deque()
        self._held = 0
        self._cond = threading.Condition()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="frames-out", daemon=True)
        self._thread.start()

    def write(self, data: bytes, /) -> int:
        self._parts.append(data)
        return len(data)

    def flush(self) -> None:
        """Hand what was written since the last flush to the thread."""
        data = b"".join(self._parts)
        self._parts.clear()
        with self._cond:
            while self._held and self._held + len(data) > self._limit and not self._failure:
                self._cond.wait()
            if self._failure is not None:
                raise self._failure
            self._queue.append(data)
            self._held += len(data)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                data = self._queue.popleft()
            if data is None:
                return
            try:
                self._out.write(data)
                self._out.flush()
            except BaseException as exc:  # raised in the parsing thread
                with self._cond:
                    self._failure = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._held -= len(data)
                self._cond.notify_all()

    def close(self) -> None:
        """Wait until everything handed over is written (or writing failed)."""
        with self._cond:
            self._queue.append(None)
            self._cond.notify_all()
        self._thread.join()
        if self._failure is not None:
            raise self._failure


def write_frame(out: Sink, payload: Any) -> None:
    blob = marshal.dumps(payload, MARSHAL_VERSION)
    out.write(FRAME_HEADER.pack(len(blob)))
    out.write(blob)
    out.flush()


def peak_rss_kib() -> int:
    """``VmHWM`` of this process (Linux). Not ``ru_maxrss``: that also counts the image of
    the process that spawned us, from before the exec."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def parse_file(
    path: str,
    out: Sink,
    *,
    batch_rows: int,
    batch_bytes: int,
    chunk_rows: int,
    chunk_bytes: int,
    quarantine_bytes: int = 1024 * 1024,
) -> None:
    """Write ``path`` to ``out`` as chunk frames, then the summary frame."""
    chunk_rows = max(1, min(chunk_rows, batch_rows))
    seen = SeenKeys()
    facts = BundleFacts()
    by_type: Counter[str] = Counter()
    repeats_by_type: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    samples: list[tuple[int, str]] = []
    conflict_samples: list[tuple[str, str, int, int]] = []
    try:
        with open(path, "rb", buffering=READ_BUFFER) as stream:
            pending: list[ParsedResource] = []
            errors: list[tuple[int, str, bytes | None, int]] = []
            issues: list[tuple[str, int, str, str, int, str]] = []
            chunk_size = 0
            batch_records = 0
            batch_errors = 0
            batch_size = 0

            def flush(commit: bool) -> None:
                records: list[tuple[Any, ...]] = []
                if pending:
                    kinds = seen.classify(
                        [
                            ((r.resource_type, r.resource_id), r.content_hash, r.line_number)
                            for r in pending
                        ]
                    )
                    for r, (kind, previous) in zip(pending, kinds, strict=True):
                        if kind == FIRST:
                            by_type[r.resource_type] += 1
                        else:
                            repeats_by_type[r.resource_type] += 1
                            name = "exact_repeat" if kind == EXACT else "conflict"
                            counts[name] += 1
                            issues.append(
                                (name, r.line_number, r.resource_type, r.resource_id, previous, "")
                            )
                            if kind == EXACT:
                                continue
                            if len(conflict_samples) < MAX_ERRORS_IN_REPORT:
                                conflict_samples.append(
                                    (r.resource_type, r.resource_id, previous, r.line_number)
                                )
                        records.append(
                            (
                                r.resource_type,
                                r.resource_id,
                                r.raw,
                                r.content_hash,
                                r.last_updated,
                                r.patient_ref,
                                kind == CONFLICT,
                                r.line_number,
                                r.entry_meta,
                            )
                        )
                write_frame(out, ("c", records, errors, issues, commit, stream.tell()))

            for item in iter_records(stream, facts):
                counts["lines"] += 1
                if isinstance(item, ParseError):
                    raw = item.raw
                    size = len(raw) if raw is not None else 0
                    kept = raw[:quarantine_bytes] if raw is not None else None
                    errors.append((item.line_number, item.reason, kept, size))
                    counts["errors"] += 1
                    batch_errors += 1
                    chunk_size += len(kept or b"")
                    if len(samples) < MAX_ERRORS_IN_REPORT:
                        samples.append((item.line_number, item.reason))
                else:
                    if item.duplicate_keys:
                        counts["duplicate_keys"] += 1
                        detail = ", ".join(item.duplicate_keys)[:200]
                        issues.append(
                            (
                                "duplicate_keys",
                                item.line_number,
                                item.resource_type,
                                item.resource_id,
                                0,
                                detail,
                            )
                        )
                    pending.append(item)
                    chunk_size += len(item.raw)
                    batch_size += len(item.raw)
                    batch_records += 1
                commit = (
                    batch_records >= batch_rows
                    or batch_size >= batch_bytes
                    or batch_errors >= batch_rows
                )
                if commit or len(pending) + len(errors) >= chunk_rows or chunk_size >= chunk_bytes:
                    flush(commit)
                    pending, errors, issues, chunk_size = [], [], [], 0
                    if commit:
                        batch_records = batch_errors = batch_size = 0
            flush(True)
    finally:
        seen.close()
    summary = {
        "lines": counts["lines"],
        "errors": counts["errors"],
        "error_samples": samples,
        "by_type": dict(sorted(by_type.items())),
        "repeats_by_type": dict(sorted(repeats_by_type.items())),
        "exact_repeats": counts["exact_repeat"],
        "conflicts": counts["conflict"],
        "conflict_samples": conflict_samples,
        "duplicate_key_lines": counts["duplicate_keys"],
        "bundle": dict(facts.facts) if facts.resource_type == "Bundle" else None,
        "peak_rss_kib": peak_rss_kib(),
    }
    write_frame(out, ("d", summary))


def read_arguments(source: IO[bytes]) -> list[str] | None:
    """The arguments of a parser started ahead of need (``--wait``): one frame on stdin.
    None at end of input: the service that started us stopped or went away."""
    header = source.read(FRAME_HEADER.size)
    if len(header) != FRAME_HEADER.size:
        return None
    (size,) = FRAME_HEADER.unpack(header)
    arguments = marshal.loads(source.read(size))  # noqa: S302 - our parent's own frame
    return [str(a) for a in arguments]


def main(argv: list[str]) -> int:
    if argv == ["--wait"]:
        waited = read_arguments(sys.stdin.buffer)
        if waited is None:
            return 0
        argv = waited
    path, batch_rows, batch_bytes, chunk_rows, chunk_bytes, quarantine_bytes = argv
    # This process holds only short-lived objects (a chunk at a time, no cycles): the
    # collector's default thresholds would scan them every few hundred lines for nothing.
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)
    out = AheadWriter(os.fdopen(sys.stdout.fileno(), "wb", buffering=64 * 1024, closefd=False))
    try:
        parse_file(
            path,
            out,
            batch_rows=int(batch_rows),
            batch_bytes=int(batch_bytes),
            chunk_rows=int(chunk_rows),
            chunk_bytes=int(chunk_bytes),
            quarantine_bytes=int(quarantine_bytes),
        )
        out.close()
    except BrokenPipeError:
        return 1  # the reader went away (an error or cancellation on its side)
    except Exception as exc:
        errno = exc.errno if isinstance(exc, OSError) else None
        strerror = exc.strerror if isinstance(exc, OSError) else None
        with contextlib.suppress(OSError):  # the reader went away, or writing failed
            write_frame(out, ("x", type(exc).__name__, errno, strerror))
            out.close()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
