"""Parse FHIR export files as a stream: NDJSON (one resource per line) or one Bundle.

Pure: the only I/O is reading the binary stream it is given. Memory stays O(longest line)
(or O(largest Bundle entry)): the file is never read whole. Errors name the line and a short
reason, never the line's content.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

import orjson

MAX_TYPE_LENGTH: Final = 64
MAX_ID_LENGTH: Final = 255
MAX_REF_LENGTH: Final = 255
MAX_LAST_UPDATED_LENGTH: Final = 64
DETECT_PREFIX_BYTES: Final = 64 * 1024
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

    @property
    def key(self) -> tuple[str, str]:
        return (self.resource_type, self.resource_id)


@dataclass(slots=True)
class ParseError:
    """A line (or Bundle entry) that is not a usable resource. Never carries content."""

    line_number: int
    reason: str


ParsedItem = ParsedResource | ParseError


def _patient_ref(resource_type: str, resource_id: str, doc: dict[str, Any]) -> str | None:
    if resource_type == "Patient":
        return f"Patient/{resource_id}"[:MAX_REF_LENGTH]
    for field in _PATIENT_LINK_FIELDS:
        link = doc.get(field)
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


def parse_document(doc: Any, raw: bytes, line_number: int) -> ParsedItem:
    """Validate an already-decoded resource whose stored bytes are ``raw``."""
    if not isinstance(doc, dict):
        return ParseError(line_number, "not an object")
    resource_type = doc.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return ParseError(line_number, "missing resourceType")
    if len(resource_type) > MAX_TYPE_LENGTH:
        return ParseError(line_number, "resourceType too long")
    resource_id = doc.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        return ParseError(line_number, "missing id")
    if len(resource_id) > MAX_ID_LENGTH:
        return ParseError(line_number, "id too long")
    return ParsedResource(
        line_number=line_number,
        raw=raw,
        resource_type=resource_type,
        resource_id=resource_id,
        last_updated=_last_updated(doc),
        patient_ref=_patient_ref(resource_type, resource_id, doc),
        content_hash=hashlib.sha256(raw).digest(),
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
    would cost ~270 MB); this costs ~1x on top of the line itself.
    """
    import ijson

    doc: dict[str, Any] = {}
    try:
        events = ijson.parse(io.BytesIO(raw), buf_size=256 * 1024)
        first = next(events, None)
        if first is None:
            return ParseError(line_number, "invalid JSON")
        is_object = first[1] == "start_map"
        for prefix, event, value in events:
            path = _LARGE_FIELDS.get(prefix) if is_object else None
            if path is None or event in ("map_key", "end_map", "end_array"):
                continue
            target = doc
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value if event == "string" else _NOT_A_STRING
    except ijson.JSONError:
        return ParseError(line_number, "invalid JSON")
    except UnicodeDecodeError:
        return ParseError(line_number, "invalid JSON")
    if not is_object:
        return ParseError(line_number, "not an object")
    return parse_document(doc, raw, line_number)


def parse_line(raw: bytes, line_number: int) -> ParsedItem:
    """Parse one NDJSON line (terminator already stripped)."""
    if len(raw) > LARGE_LINE_BYTES:
        return _parse_large_line(raw, line_number)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ParseError(line_number, "invalid JSON")
    return parse_document(doc, raw, line_number)


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


def iter_bundle(stream: IO[bytes]) -> Iterator[ParsedItem]:
    """The ``entry[].resource`` of one FHIR Bundle, streamed with ijson (yajl2 C backend).

    Stored bytes are the resource's compact JSON (orjson); ``line_number`` is the entry's
    1-based position in ``entry``.
    """
    import ijson

    position = 0
    try:
        for entry in ijson.items(stream, "entry.item", use_float=True):
            position += 1
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if resource is None:
                yield ParseError(position, "entry without resource")
                continue
            try:
                raw = orjson.dumps(resource)
            except TypeError:
                yield ParseError(position, "unserializable resource")
                continue
            yield parse_document(resource, raw, position)
    except ijson.JSONError:
        yield ParseError(position + 1, "invalid JSON")


def _top_level_resource_type(prefix: bytes) -> str | None:
    """``resourceType`` of the first JSON object, if it appears in ``prefix``."""
    import ijson

    try:
        for prefix_path, event, value in ijson.parse(io.BytesIO(prefix)):
            if prefix_path == "resourceType" and event == "string":
                return str(value)
            if prefix_path == "" and event == "end_map":
                return None
    except ijson.JSONError:
        return None  # incomplete prefix or not JSON at all: not a Bundle we can see
    return None


def detect_format(prefix: bytes) -> str:
    """``bundle`` when the data starts with a JSON object whose resourceType is Bundle
    (within the first bytes) and that object spans more than one line or holds ``entry``;
    else ``ndjson``."""
    head = prefix.lstrip(_BOM).lstrip()
    if not head.startswith(b"{"):
        return "ndjson"
    first_line = head.split(b"\n", 1)[0]
    if b"Bundle" not in first_line and b"\\u" not in first_line:
        # The common NDJSON case, without loading ijson: a first line that is a whole
        # object and cannot spell "Bundle" is the first object, and it is no Bundle.
        try:
            if isinstance(orjson.loads(first_line), dict):
                return "ndjson"
        except orjson.JSONDecodeError:
            pass
    if _top_level_resource_type(first_line) == "Bundle":
        # A whole Bundle on the first line: a Bundle file unless more lines follow.
        rest = head[len(first_line) :].strip()
        return "bundle" if not rest else "ndjson"
    if b"\n" in head and _top_level_resource_type(head) == "Bundle":
        return "bundle"  # pretty-printed Bundle
    return "ndjson"


class _Prefixed(io.RawIOBase):
    """Bytes already read, then the rest of a non-seekable stream."""

    def __init__(self, prefix: bytes, rest: IO[bytes]) -> None:
        self._prefix = memoryview(prefix)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def iter_records(stream: IO[bytes]) -> Iterator[ParsedItem]:
    """Parse NDJSON or a Bundle, detected from the first bytes of ``stream``."""
    seekable = stream.seekable()
    start = stream.tell() if seekable else 0
    prefix = stream.read(DETECT_PREFIX_BYTES)
    kind = detect_format(prefix)
    if seekable:
        stream.seek(start)
        source: IO[bytes] = stream
    else:
        source = io.BufferedReader(_Prefixed(prefix, stream), buffer_size=1024 * 1024)
    if kind == "bundle":
        yield from iter_bundle(source)
    else:
        yield from iter_ndjson(source)
