from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from ehi_bridge.api.repository import BadCursor, decode_cursor, encode_cursor


def test_round_trip() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    cursor = encode_cursor("c", [at.isoformat(), "abc"])
    assert "=" not in cursor
    assert decode_cursor("c", cursor, (datetime, str)) == [at, "abc"]
    assert decode_cursor("r", encode_cursor("r", ["c1", "Patient", 7]), (str, str, int)) == [
        "c1",
        "Patient",
        7,
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b'["e", 1]',  # another list's cursor
        b'["x"]',
        b'["x", 1, 2]',
        b'["x", "1"]',
        b'["x", true]',
        b'["x", -1]',
        b'["x", 9223372036854775808]',
        b'["c", "2026-01-01", "a"]',  # naive timestamp
        b'["c", "yesterday", "a"]',
        b'["c", "2026-01-01T00:00:00+00:00", 5]',
        b'["r", "a\\u0000", "P", 1]',
    ],
)
def test_rejects(raw: bytes) -> None:
    cursor = base64.urlsafe_b64encode(raw).decode()
    kind = "c" if b'"c"' in raw else "r" if b'"r"' in raw else "x"
    types: tuple[type, ...] = {
        "c": (datetime, str),
        "r": (str, str, int),
        "x": (int,),
    }[kind]
    with pytest.raises(BadCursor):
        decode_cursor(kind, cursor, types)


@pytest.mark.parametrize("cursor", ["", "!!!", "é", "a", "abcde"])
def test_rejects_non_base64(cursor: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor("x", cursor, (int,))


def test_a_cursor_date_past_the_end_of_time_in_utc_is_refused() -> None:
    for date in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"):
        raw = base64.urlsafe_b64encode(f'["c","{date}","id-1"]'.encode()).decode().rstrip("=")
        with pytest.raises(BadCursor):
            decode_cursor("c", raw, (datetime, str))
