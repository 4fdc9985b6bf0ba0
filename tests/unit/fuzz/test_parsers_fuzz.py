"""Fuzz and property tests of the pure parsers at the edges: the signature verifier, the
webhook envelope checks and the NDJSON/Bundle parser. Whatever the input, each answers
with its own error type (never another exception), and what it accepts is storable."""

from __future__ import annotations

import base64
import contextlib
import io
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from ehi_bridge.records.ndjson import (
    MAX_ID_LENGTH,
    MAX_TYPE_LENGTH,
    ParsedResource,
    ParseError,
    iter_records,
)
from ehi_bridge.webhooks.envelope import (
    MAX_EVENT_ID_LENGTH,
    MAX_EVENT_TYPE_LENGTH,
    EnvelopeError,
    check,
)
from ehi_bridge.webhooks.signature import SignatureError, Verifier, decode_secret, sign
from tests.fuzz_settings import fuzz_settings

SECRET = "whsec_" + base64.b64encode(b"fuzz-secret-0123456789abcdef").decode()
KEY = decode_secret(SECRET)
VERIFIER = Verifier([SECRET])
NOW = 1_800_000_000
KNOWN_REASONS = {
    "missing webhook-id, webhook-timestamp or webhook-signature",
    "webhook-id is not a valid id",
    "webhook-timestamp is not a number",
    "timestamp too old",
    "timestamp too far in the future",
    "no matching signature",
}

header_text = st.text(st.characters(codec="latin-1"), max_size=80)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=8,
)


class Count:
    def __init__(self) -> None:
        self.n = 0


# --- the verifier ------------------------------------------------------------------------


@given(
    msg_id=header_text,
    timestamp=header_text | st.integers().map(str),
    signature=header_text,
    body=st.binary(max_size=200),
)
@fuzz_settings(3000)
def test_verifier_answers_only_signature_errors(
    msg_id: str, timestamp: str, signature: str, body: bytes
) -> None:
    headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
    try:
        VERIFIER.verify(headers, body, now=NOW)
    except SignatureError as error:
        assert error.reason in KNOWN_REASONS  # fixed texts: nothing of the input echoed


@given(
    msg_id=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=40),
    skew=st.integers(-299, 299),
    body=st.binary(max_size=300),
    extra=st.lists(
        st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=20), max_size=3
    ),
)
@fuzz_settings(1000)
def test_verifier_accepts_every_genuine_signature_among_others(
    msg_id: str, skew: int, body: bytes, extra: list[str]
) -> None:
    genuine = sign(KEY, msg_id, NOW + skew, body)
    header = " ".join([*(f"v1,{e}" for e in extra), genuine])
    verified = VERIFIER.verify(
        {"webhook-id": msg_id, "webhook-timestamp": str(NOW + skew), "webhook-signature": header},
        body,
        now=NOW,
    )
    assert (verified.msg_id, verified.timestamp) == (msg_id, NOW + skew)


# --- the envelope checks -----------------------------------------------------------------

ids = st.text(max_size=300)
envelopes = st.fixed_dictionaries(
    {
        "id": ids | json_scalars,
        "type": ids | json_scalars,
        "api_mode": st.sampled_from(["test", "live", "x"]),
    },
    optional={
        "data": st.dictionaries(
            st.sampled_from(["org_connection_id", "external_id", "task_id", "scope", "other"]),
            json_values | st.text(max_size=1100),
            max_size=4,
        )
        | json_values,
        "date": json_scalars,
    },
)


@given(envelope=envelopes)
@fuzz_settings(1000)
def test_envelope_check_accepts_only_storable_envelopes(envelope: dict[str, Any]) -> None:
    body = orjson.dumps(envelope)
    try:
        checked = check(body, "test")
    except EnvelopeError as error:
        assert error.reason and len(error.reason) < 100
        return
    assert 0 < len(checked.event_id) <= MAX_EVENT_ID_LENGTH
    assert 0 < len(checked.event_type) <= MAX_EVENT_TYPE_LENGTH
    for value in (checked.event_id, checked.event_type, checked.org_connection_id or "x"):
        assert "\x00" not in value and value.isprintable()
    if checked.org_connection_id is not None:
        assert len(checked.org_connection_id) <= 255


@given(body=st.binary(max_size=400))
@fuzz_settings(2500)
def test_envelope_check_of_arbitrary_bytes_never_raises_another_error(body: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        check(body, "live")


@given(depth=st.integers(1, 2000), kind=st.sampled_from([b"[", b'{"a":']))
@fuzz_settings(300)
def test_envelope_depth_is_bounded(depth: int, kind: bytes) -> None:
    close = b"]" if kind == b"[" else b"}"
    deep = kind * depth + b"1" + close * depth
    body = b'{"id":"e","type":"t","api_mode":"test","data":{"x":' + deep + b"}}"
    try:
        check(body, "test", max_depth=32)
    except EnvelopeError:
        assert depth + 2 > 32
        return
    assert depth + 2 <= 32


# --- the NDJSON / Bundle parser ----------------------------------------------------------

resources = st.fixed_dictionaries(
    {
        "resourceType": st.text(max_size=80) | json_scalars,
        "id": st.text(max_size=300) | json_scalars,
    },
    optional={"meta": json_values, "subject": json_values, "patient": json_values},
)


def _parse_all(data: bytes) -> list[Any]:
    items = list(iter_records(io.BytesIO(data)))
    for item in items:
        assert isinstance(item, (ParsedResource, ParseError))
        if isinstance(item, ParsedResource):
            assert 0 < len(item.resource_type) <= MAX_TYPE_LENGTH
            assert 0 < len(item.resource_id) <= MAX_ID_LENGTH
            assert isinstance(orjson.loads(item.raw), dict)
    return items


@given(lines=st.lists(resources | json_values, max_size=6), crlf=st.booleans())
@fuzz_settings(600)
def test_ndjson_of_generated_resources_parses_or_reports(lines: list[Any], crlf: bool) -> None:
    newline = b"\r\n" if crlf else b"\n"
    _parse_all(newline.join(orjson.dumps(line) for line in lines))


@given(entries=st.lists(st.fixed_dictionaries({"resource": resources}) | json_values, max_size=5))
@fuzz_settings(400)
def test_bundle_of_generated_entries_parses_or_reports(entries: list[Any]) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    _parse_all(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))


@given(data=st.binary(max_size=500))
@fuzz_settings(2000)
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _parse_all(data)
