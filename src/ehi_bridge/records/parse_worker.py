"""The ingest's parser process: one export file in, framed batches of parsed records out.

Started by :mod:`ehi_bridge.records.ingest` as ``python -m ehi_bridge.records.parse_worker``
(a fresh interpreter, never a fork of the threaded service), so parsing (orjson, sha256,
the exact repeated-key check) runs on its own core and under its own GIL while the service
process only binds and steps the database.

Protocol, on stdout: frames of an 8-byte little-endian length and a :mod:`marshal` payload
(bytes, str, int, bool, None, tuples, lists and dicts only; no pickle, nothing executable).

- ``("c", records, errors, commit, bytes_read)``: a chunk. ``records`` are tuples
  ``(resource_type, resource_id, raw, content_hash, last_updated, patient_ref, repeat)``
  in file order, ``repeat`` true when the key already occurred earlier in the file;
  ``errors`` are ``(line_number, reason)``. ``commit`` ends a batch (one transaction).
- ``("d", lines, error_count, error_samples, by_type, repeats_by_type, peak_rss_kib)``:
  end of file (``peak_rss_kib``: this process's own high-water RSS, 0 if unknown).
- ``("x", kind, errno, strerror)``: parsing failed (``kind`` is the exception's class
  name; no message, which could quote content).

Memory is bounded by one chunk (plus the longest line): a frame is written before the next
chunk is built, and the write blocks while the reader is behind. The process ends when
its stdout is closed (the reader went away) or it is killed.

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
from collections import Counter
from typing import IO, Any, Final

from ehi_bridge.records.ndjson import ParseError, iter_records
from ehi_bridge.records.seen import SeenKeys

FRAME_HEADER: Final = struct.Struct("<Q")
MARSHAL_VERSION: Final = 4
READ_BUFFER: Final = 1024 * 1024
MAX_ERRORS_IN_REPORT: Final = 50


def write_frame(out: IO[bytes], payload: Any) -> None:
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
    out: IO[bytes],
    *,
    batch_rows: int,
    batch_bytes: int,
    chunk_rows: int,
    chunk_bytes: int,
) -> None:
    """Write ``path`` to ``out`` as chunk frames, then the summary frame."""
    chunk_rows = max(1, min(chunk_rows, batch_rows))
    seen = SeenKeys()
    by_type: Counter[str] = Counter()
    repeats_by_type: Counter[str] = Counter()
    lines = 0
    error_count = 0
    samples: list[tuple[int, str]] = []
    try:
        with open(path, "rb", buffering=READ_BUFFER) as stream:
            pending: list[Any] = []  # ParsedResource
            errors: list[tuple[int, str]] = []
            chunk_size = 0
            batch_records = 0
            batch_errors = 0
            batch_size = 0

            def flush(commit: bool) -> None:
                records: list[tuple[Any, ...]] = []
                if pending:
                    firsts = seen.add_batch([(r.resource_type, r.resource_id) for r in pending])
                    for r, first in zip(pending, firsts, strict=True):
                        if first:
                            by_type[r.resource_type] += 1
                        else:
                            repeats_by_type[r.resource_type] += 1
                        records.append(
                            (
                                r.resource_type,
                                r.resource_id,
                                r.raw,
                                r.content_hash,
                                r.last_updated,
                                r.patient_ref,
                                not first,
                            )
                        )
                write_frame(out, ("c", records, errors, commit, stream.tell()))

            for item in iter_records(stream):
                lines += 1
                if isinstance(item, ParseError):
                    errors.append((item.line_number, item.reason))
                    error_count += 1
                    batch_errors += 1
                    if len(samples) < MAX_ERRORS_IN_REPORT:
                        samples.append((item.line_number, item.reason))
                else:
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
                    pending, errors, chunk_size = [], [], 0
                    if commit:
                        batch_records = batch_errors = batch_size = 0
            flush(True)
    finally:
        seen.close()
    write_frame(
        out,
        (
            "d",
            lines,
            error_count,
            samples,
            dict(sorted(by_type.items())),
            dict(sorted(repeats_by_type.items())),
            peak_rss_kib(),
        ),
    )


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
    path, batch_rows, batch_bytes, chunk_rows, chunk_bytes = argv
    # This process holds only short-lived objects (a chunk at a time, no cycles): the
    # collector's default thresholds would scan them every few hundred lines for nothing.
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)
    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=64 * 1024, closefd=False)
    try:
        parse_file(
            path,
            out,
            batch_rows=int(batch_rows),
            batch_bytes=int(batch_bytes),
            chunk_rows=int(chunk_rows),
            chunk_bytes=int(chunk_bytes),
        )
    except BrokenPipeError:
        return 1  # the reader went away (an error or cancellation on its side)
    except Exception as exc:
        errno = exc.errno if isinstance(exc, OSError) else None
        strerror = exc.strerror if isinstance(exc, OSError) else None
        with contextlib.suppress(BrokenPipeError):
            write_frame(out, ("x", type(exc).__name__, errno, strerror))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
