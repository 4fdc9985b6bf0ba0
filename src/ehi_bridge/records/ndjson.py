"""Parse FHIR export files as a stream: NDJSON (one resource per line) or one Bundle.

Pure: the only I/O is reading the binary stream it is given (a stream that cannot seek is
first copied to an anonymous temporary file, since telling the formats apart may need a
walk through the whole first value). Memory stays O(longest line) (or O(largest Bundle
entry)): the file is never read whole.

The format is decided by structure (:func:`detect_stream`), never by size or key order: a
file holding exactly one JSON value whose top-level ``resourceType`` is ``Bundle`` (on one
line or pretty-printed, ``resourceType`` first or last) is a Bundle; anything else is NDJSON.

Stored bytes are always the file's own: the line (terminator stripped), or the exact span
of a Bundle's ``entry.resource`` (:mod:`ehi_bridge.records.bundle`).

Duplicate JSON keys: a resource is stored byte for byte, so nothing is collapsed, and its
duplicated key names are reported (``duplicate_keys``). The row's (type, id) must not
depend on whether a reader keeps the first or the last of two keys: a resource whose
top-level ``resourceType`` or ``id`` occurs twice with different values is rejected
(quarantined) instead of being filed under either. Lines over ``LARGE_LINE_BYTES`` are
checked for duplicates at the top level only.

Errors name the line and a short reason; the content travels only in ``ParseError.raw``,
for the quarantine, never in a message.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final, cast

import orjson

from ehi_bridge.records.bundle import BundleFacts, iter_entries
from ehi_bridge.records.jsonscan import ScanError, Scanner, first_value_shape

MAX_TYPE_LENGTH: Final = 64
MAX_ID_LENGTH: Final = 255
MAX_REF_LENGTH: Final = 255
MAX_LAST_UPDATED_LENGTH: Final = 64
LARGE_LINE_BYTES: Final = 1024 * 1024  # longer lines are parsed by events, not by orjson
_BOM: Final = b"\xef\xbb\xbf"
_PATIENT_LINK_FIELDS: Final = ("subject", "patient", "beneficiary")


@dataclass(slots=True)
class ParsedResource:
    """One resource: its bytes exactly as in the file (line terminator stripped)."""

    line_number: int
    raw: bytes
    resource_type: str
    resource_id: str
    last_updated: str | None
    patient_ref: str | None
    content_hash: bytes  # sha256 of ``raw``
    duplicate_keys: tuple[str, ...] = ()  # key names that occur twice in one object
    entry_meta: str | None = None  # Bundle entry: JSON of its fullUrl and search.mode

    @property
    def key(self) -> tuple[str, str]:
        return (self.resource_type, self.resource_id)


@dataclass(slots=True)
class ParseError:
    """A line (or Bundle entry) that is not a usable resource. Never carries content."""

    line_number: int
    reason: str
    raw: bytes | None = field(default=None, compare=False, repr=False)  # for the quarantine


ParsedItem = ParsedResource | ParseError


def _patient_ref(resource_type: str, resource_id: str, doc: dict[str, Any]) -> str | None:
    if resource_type == "Patient":
        return f"Patient/{resource_id}"[:MAX_REF_LENGTH]
    for link_field in _PATIENT_LINK_FIELDS:
        link = doc.get(link_field)
        if not isinstance(link, dict):
            continue
        ref = link.get("reference")
        if not isinstance(ref, str):
            continue
        if ref.startswith("Patient/"):
            return ref[:MAX_REF_LENGTH]
        at = ref.find("/Patient/")  # absolute reference: https://server/fhir/Patient/123
        if at >= 0:
            return ref[at + 1 :][:MAX_REF_LENGTH]
    return None


def _last_updated(doc: dict[str, Any]) -> str | None:
    meta = doc.get("meta")
    if isinstance(meta, dict):
        value = meta.get("lastUpdated")
        if isinstance(value, str):
            return value[:MAX_LAST_UPDATED_LENGTH]
    return None


_KEY_COLON: Final = re.compile(rb'"[ \t\r\n]*:')
_SPACED_KEY: Final = (b'" ', b'"\t', b'"\n', b'"\r')
_DECIDING_KEYS: Final = ("resourceType", "id")


def _exact_duplicates(raw: bytes) -> tuple[list[str], list[str]]:
    """(duplicated key names anywhere, deciding keys duplicated with different values)."""
    names: set[str] = set()
    top: list[list[tuple[str, Any]]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                names.add(key)
            seen.add(key)
        top.append(items)
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs)
    conflicting: list[str] = []
    if top and names & set(_DECIDING_KEYS):
        outer = top[-1]  # the top-level object is completed last
        for key in _DECIDING_KEYS:
            values = [value for name, value in outer if name == key]
            if len(values) > 1 and any(v != values[0] for v in values[1:]):
                conflicting.append(key)
    return sorted(names), conflicting


def duplicate_keys(raw: bytes, doc: Any) -> tuple[list[str], list[str]]:
    """Duplicate keys of the JSON ``raw`` (already decoded as ``doc`` by orjson, which
    keeps the last of two keys): see :func:`_exact_duplicates`.

    Fastest path, exact: if orjson's re-encoding of ``doc`` is ``raw`` itself, ``raw`` has
    no duplicate key (the re-encoding has one key token per dict entry, so a dropped key
    would make it differ). Compact exports (Synthea, most bulk-data servers) take this
    path: one encoding and one comparison, no search of the line.

    Fast path, exact: every key ends in ``"`` then ``:`` (a string's own quotes are
    escaped), so counting that pattern in ``raw`` and in orjson's re-encoding of ``doc``
    gives equal numbers unless a key was dropped, or ``raw`` spells a character as a
    ``\\u`` escape (then the exact check runs).
    """
    encoded = orjson.dumps(doc)
    if encoded == raw:
        return [], []
    if b"\\u" not in raw:
        if any(pattern in raw for pattern in _SPACED_KEY):
            keys = len(_KEY_COLON.findall(raw))
        else:  # no whitespace after any quote: a plain count (several times faster)
            keys = raw.count(b'":')
        if keys == encoded.count(b'":'):
            return [], []
    try:
        return _exact_duplicates(raw)
    except ValueError:
        return [], []


def parse_document(
    doc: Any,
    raw: bytes,
    line_number: int,
    dup_keys: tuple[list[str], list[str]] = ([], []),
) -> ParsedItem:
    """Validate an already-decoded resource whose stored bytes are ``raw``."""
    if not isinstance(doc, dict):
        return ParseError(line_number, "not an object", raw)
    names, conflicting = dup_keys
    if conflicting:
        return ParseError(line_number, f"duplicate key {conflicting[0]} with different values", raw)
    resource_type = doc.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return ParseError(line_number, "missing resourceType", raw)
    if len(resource_type) > MAX_TYPE_LENGTH:
        return ParseError(line_number, "resourceType too long", raw)
    resource_id = doc.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        return ParseError(line_number, "missing id", raw)
    if len(resource_id) > MAX_ID_LENGTH:
        return ParseError(line_number, "id too long", raw)
    return ParsedResource(
        line_number=line_number,
        raw=raw,
        resource_type=resource_type,
        resource_id=resource_id,
        last_updated=_last_updated(doc),
        patient_ref=_patient_ref(resource_type, resource_id, doc),
        content_hash=hashlib.sha256(raw).digest(),
        duplicate_keys=tuple(names),
    )


_NOT_A_STRING: Final = object()
_LARGE_FIELDS: Final = {
    "resourceType": ("resourceType",),
    "id": ("id",),
    "meta.lastUpdated": ("meta", "lastUpdated"),
    "subject.reference": ("subject", "reference"),
    "patient.reference": ("patient", "reference"),
    "beneficiary.reference": ("beneficiary", "reference"),
}


def _parse_large_line(raw: bytes, line_number: int) -> ParsedItem:
    """Validate a long line with ijson's event stream and keep only the fields we need.

    orjson builds its whole document tree up front (peak ~13x the line: a 20 MB Binary
    would cost ~270 MB); this costs ~1x on top of the line itself. Duplicate keys are
    looked for at the top level only.
    """
    # Deliberately lazy: only lines over 1 MiB need it, and every parser process starts here.
    import ijson

    doc: dict[str, Any] = {}
    top_keys: set[str] = set()
    names: set[str] = set()
    deciding: dict[str, list[Any]] = {}
    try:
        events = ijson.parse(io.BytesIO(raw), buf_size=256 * 1024)
        first = next(events, None)
        if first is None:
            return ParseError(line_number, "invalid JSON", raw)
        is_object = first[1] == "start_map"
        for prefix, event, value in events:
            if is_object and prefix == "" and event == "map_key":
                if value in top_keys:
                    names.add(value)
                top_keys.add(value)
                continue
            path = _LARGE_FIELDS.get(prefix) if is_object else None
            if path is None or event in ("map_key", "end_map", "end_array"):
                continue
            target = doc
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value if event == "string" else _NOT_A_STRING
            if prefix in _DECIDING_KEYS:
                deciding.setdefault(prefix, []).append(target[path[-1]])
    except ijson.JSONError:
        return ParseError(line_number, "invalid JSON", raw)
    except UnicodeDecodeError:
        return ParseError(line_number, "invalid JSON", raw)
    if not is_object:
        return ParseError(line_number, "not an object", raw)
    conflicting = [
        key for key, values in deciding.items() if any(value != values[0] for value in values[1:])
    ]
    return parse_document(doc, raw, line_number, (sorted(names), conflicting))


def parse_line(raw: bytes, line_number: int) -> ParsedItem:
    """Parse one NDJSON line (terminator already stripped)."""
    if len(raw) > LARGE_LINE_BYTES:
        return _parse_large_line(raw, line_number)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ParseError(line_number, "invalid JSON", raw)
    return parse_document(doc, raw, line_number, duplicate_keys(raw, doc))


def iter_ndjson(stream: IO[bytes]) -> Iterator[ParsedItem]:
    """Each non-blank line of an NDJSON stream, parsed; ``line_number`` counts from 1."""
    line_number = 0
    for line in stream:
        line_number += 1
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if line_number == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        if not line or line.isspace():
            continue
        yield parse_line(line, line_number)


def iter_bundle(stream: IO[bytes], facts: BundleFacts | None = None) -> Iterator[ParsedItem]:
    """The ``entry[].resource`` of one FHIR Bundle, each as its exact bytes in the file.

    ``line_number`` is the entry's 1-based position in ``entry``; ``entry_meta`` holds the
    entry's ``fullUrl`` and ``search.mode``; ``facts`` (if given) collects the Bundle's
    own id, type, timestamp and total.
    """
    facts = facts if facts is not None else BundleFacts()
    for entry in iter_entries(stream, facts):
        if not entry.is_object:
            yield ParseError(entry.position, "entry is not an object")
            continue
        if entry.raw is None:
            yield ParseError(entry.position, "entry without resource")
            continue
        item = parse_line(entry.raw, entry.position)
        if isinstance(item, ParsedResource):
            meta = {
                name: value
                for name, value in (("fullUrl", entry.full_url), ("search", entry.search_mode))
                if value is not None
            }
            if meta:
                item.entry_meta = orjson.dumps(meta).decode()
        yield item
    if facts.error is not None:
        yield ParseError(*facts.error)


class _FirstBytes:
    """The first ``limit`` bytes of a stream, as a stream."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(size) if size else b""
        self._left -= len(data)
        return data


def _first_newline(stream: IO[bytes]) -> tuple[int | None, bool]:
    """Offset (from the current position) of the first newline, and whether anything but
    whitespace follows it. Reads chunks and keeps none."""
    offset = 0
    newline: int | None = None
    while True:
        chunk = stream.read(1024 * 1024)
        if not chunk:
            return newline, False
        start = 0
        if newline is None:
            at = chunk.find(b"\n")
            if at < 0:
                offset += len(chunk)
                continue
            newline = offset + at
            start = at + 1
        if chunk[start:].strip():
            return newline, True


def _bundle_first(stream: IO[bytes], start: int) -> bool | None:
    """The quick answer when ``resourceType`` is the first key and says Bundle: a file of
    one line holds one value (a Bundle); a first line that is a whole value with more
    lines after it is NDJSON. None otherwise (then the first value is walked whole)."""
    scanner = Scanner(stream)
    scanner.skip_bom()
    scanner.peek()
    value_start = start + scanner.offset
    if not scanner.accept(b"{") or scanner.peek() != ord('"'):
        return None
    if scanner.read_key() != "resourceType":
        return None
    if orjson.loads(scanner.read_value()) != "Bundle":
        return None
    stream.seek(value_start)
    newline, more = _first_newline(stream)
    if newline is None or not more:
        return True  # one line: one value
    stream.seek(value_start)
    try:
        first_value_shape(cast(IO[bytes], _FirstBytes(stream, newline)))
    except ScanError:
        return None  # the value goes on past its first line: walk it to its end
    return False  # a whole Bundle on the first line and more lines after it: NDJSON


def detect_stream(stream: IO[bytes]) -> str:
    """``bundle`` when the stream holds exactly one JSON value, an object whose top-level
    ``resourceType`` is ``Bundle``; else ``ndjson``. Reads from the stream's current
    position (which must be seekable) and leaves it anywhere.

    A single-line Bundle with ``resourceType`` first: a search for the first newline.
    Otherwise the first value is walked without being kept: an NDJSON file costs its first
    line, a pretty-printed Bundle or one with ``resourceType`` later one extra skim."""
    start = stream.tell()
    try:
        quick = _bundle_first(stream, start)
        if quick is not None:
            return "bundle" if quick else "ndjson"
        stream.seek(start)
        resource_type, more = first_value_shape(stream)
    except (ScanError, orjson.JSONDecodeError):
        return "ndjson"
    return "bundle" if resource_type == "Bundle" and not more else "ndjson"


def detect_format(data: bytes) -> str:
    """:func:`detect_stream` of some bytes."""
    return detect_stream(io.BytesIO(data))


def iter_records(stream: IO[bytes], facts: BundleFacts | None = None) -> Iterator[ParsedItem]:
    """Parse NDJSON or a Bundle, detected by the structure of ``stream``."""
    if not stream.seekable():
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        try:
            shutil.copyfileobj(stream, spool, 1024 * 1024)
            spool.seek(0)
            yield from iter_records(spool, facts)
        finally:
            spool.close()
        return
    start = stream.tell()
    kind = detect_stream(stream)
    stream.seek(start)
    if kind == "bundle":
        yield from iter_bundle(stream, facts)
    else:
        yield from iter_ndjson(stream)
