"""The checks at the door: is a verified delivery's envelope one the inbox can store and
the appliers can read? Pure: no I/O.

Everything that is stored in a column of its own (the event id, its type, the
``org_connection_id``) or later copied into one (the connection's fields, an export's
``task_id``) is checked here, against the column's length and for characters a database
refuses (NUL) or a reader trips over (control characters). The body is walked once for
its nesting depth and for NUL characters in any string. A delivery that fails here can
never be stored: it is answered 400 alone instead of failing the group commit it would
have joined (one ``DataError`` fails every statement of a batch on PostgreSQL) or being
stored and then failing every read (a 300-deep body cannot be serialised back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

MAX_EVENT_ID_LENGTH = 255
MAX_EVENT_TYPE_LENGTH = 128
MAX_MODE_LENGTH = 8
DEFAULT_MAX_DEPTH = 32

# Fields of ``data`` that appliers copy into columns, with those columns' lengths.
DATA_FIELD_LENGTHS: dict[str, int] = {
    "org_connection_id": 255,
    "external_id": 255,
    "endpoint_id": 255,
    "brand_id": 255,
    "portal_id": 255,
    "org_id": 255,
    "request_id": 255,
    "external_state": 255,
    "task_id": 255,
    "scope": 1024,
    "consent_expires_at": 64,
    "platform_type": 64,
}
# Of those, the identifiers: printable characters only.
ID_FIELDS = frozenset(
    {"org_connection_id", "external_id", "endpoint_id", "brand_id", "portal_id", "org_id"}
    | {"request_id", "task_id", "platform_type"}
)


class EnvelopeError(ValueError):
    """The envelope cannot be stored. ``reason`` names the field, never echoes its value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Checked:
    event_id: str
    event_type: str
    org_connection_id: str | None


def _is_id(value: str, limit: int) -> bool:
    return 0 < len(value) <= limit and value.isprintable()


def _walk(value: Any, max_depth: int) -> str | None:
    """The first problem in a parsed JSON value: too deep, or a string holding NUL."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > max_depth:
                return f"body nests deeper than {max_depth} levels"
            for key, item in node.items():
                if "\x00" in key:
                    return "body holds a NUL character"
                if isinstance(item, str):
                    if "\x00" in item:
                        return "body holds a NUL character"
                elif isinstance(item, (dict, list)):
                    stack.append((item, depth + 1))
        elif isinstance(node, list):
            if depth > max_depth:
                return f"body nests deeper than {max_depth} levels"
            for item in node:
                if isinstance(item, str):
                    if "\x00" in item:
                        return "body holds a NUL character"
                elif isinstance(item, (dict, list)):
                    stack.append((item, depth + 1))
    return None


def check(body: bytes, mode: str, max_depth: int = DEFAULT_MAX_DEPTH) -> Checked:
    """Parse and check a verified body sent to ``mode``'s endpoint; raise EnvelopeError."""
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EnvelopeError("body is not valid UTF-8 JSON") from None
    if not isinstance(envelope, dict):
        raise EnvelopeError("envelope must be a JSON object")
    event_id = envelope.get("id")
    if not isinstance(event_id, str) or not _is_id(event_id, MAX_EVENT_ID_LENGTH):
        raise EnvelopeError("envelope field 'id' missing or invalid")
    event_type = envelope.get("type")
    if not isinstance(event_type, str) or not _is_id(event_type, MAX_EVENT_TYPE_LENGTH):
        raise EnvelopeError("envelope field 'type' missing or invalid")
    api_mode = envelope.get("api_mode")
    if not isinstance(api_mode, str) or not _is_id(api_mode, MAX_MODE_LENGTH):
        raise EnvelopeError("envelope field 'api_mode' missing or invalid")
    if api_mode != mode:
        raise EnvelopeError(f"envelope api_mode differs from the {mode} endpoint")
    data = envelope.get("data", {})
    if data is not None and not isinstance(data, dict):
        raise EnvelopeError("envelope field 'data' must be an object")
    # The walk is needed only when the bytes allow a problem (C-speed scans first): JSON
    # cannot nest deeper than it has brackets, and a string holds NUL only as an escape.
    if body.count(b"{") + body.count(b"[") > max_depth or b"\\u0000" in body:
        problem = _walk(envelope, max_depth)
        if problem:
            raise EnvelopeError(problem)
    org_connection_id = None
    if data:
        for name, limit in DATA_FIELD_LENGTHS.items():
            value = data.get(name)
            if not isinstance(value, str):
                continue
            if len(value) > limit or (name in ID_FIELDS and value and not value.isprintable()):
                raise EnvelopeError(f"data field {name!r} too long or invalid")
        candidate = data.get("org_connection_id")
        if isinstance(candidate, str) and candidate:
            org_connection_id = candidate
    return Checked(event_id=event_id, event_type=event_type, org_connection_id=org_connection_id)
