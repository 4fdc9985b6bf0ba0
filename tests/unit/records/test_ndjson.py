from __future__ import annotations

import hashlib
import io
import tracemalloc
from pathlib import Path

import orjson
import pytest

from ehi_bridge.records.ndjson import (
    ParsedResource,
    ParseError,
    detect_format,
    iter_ndjson,
    iter_records,
    parse_line,
)

FIXTURE = (
    Path(__file__).resolve().parents[2] / "fixtures" / "records" / "synthea-one-patient.ndjson"
)


def _records(data: bytes) -> list[ParsedResource | ParseError]:
    return list(iter_records(io.BytesIO(data)))


def test_fixture_lines_are_kept_byte_for_byte() -> None:
    data = FIXTURE.read_bytes()
    items = _records(data)
    assert all(isinstance(item, ParsedResource) for item in items)
    assert [item.raw for item in items if isinstance(item, ParsedResource)] == [
        line for line in data.split(b"\n") if line
    ]
    first = items[0]
    assert isinstance(first, ParsedResource)
    assert first.content_hash == hashlib.sha256(first.raw).digest()


def test_fields_and_patient_reference() -> None:
    line = (
        b'{"resourceType":"Condition","id":"c1","meta":{"lastUpdated":"2024-01-02T03:04:05Z"},'
        b'"subject":{"reference":"Patient/p1"}}'
    )
    item = parse_line(line, 7)
    assert isinstance(item, ParsedResource)
    assert (item.line_number, item.resource_type, item.resource_id) == (7, "Condition", "c1")
    assert item.last_updated == "2024-01-02T03:04:05Z"
    assert item.patient_ref == "Patient/p1"

    patient = parse_line(b'{"resourceType":"Patient","id":"p1"}', 1)
    assert isinstance(patient, ParsedResource) and patient.patient_ref == "Patient/p1"

    coverage = parse_line(
        b'{"resourceType":"Coverage","id":"v","beneficiary":{"reference":"https://x/fhir/Patient/9"}}',
        1,
    )
    assert isinstance(coverage, ParsedResource) and coverage.patient_ref == "Patient/9"

    by_group = parse_line(
        b'{"resourceType":"Observation","id":"o","subject":{"reference":"Group/g"}}', 1
    )
    assert isinstance(by_group, ParsedResource) and by_group.patient_ref is None

    allergy = parse_line(
        b'{"resourceType":"AllergyIntolerance","id":"a","patient":{"reference":"Patient/p2"}}', 1
    )
    assert isinstance(allergy, ParsedResource) and allergy.patient_ref == "Patient/p2"


def test_malformed_lines_become_errors_without_content() -> None:
    secret = "Jane Q. Secret-Name"
    data = b"\n".join(
        [
            b'{"resourceType":"Patient","id":"ok1"}',
            b'{"resourceType":"Patient","id":"broken", "name": "' + secret.encode(),
            b'{"id":"no-type","name":"' + secret.encode() + b'"}',
            b'{"resourceType":"Patient","name":"' + secret.encode() + b'"}',
            b'{"resourceType":"Patient","id":""}',
            b'{"resourceType":"Patient","id":42}',
            b'["' + secret.encode() + b'"]',
            b"",
            b"   ",
            b'{"resourceType":"Observation","id":"ok2"}',
            b'"just a string"',
            b'{"resourceType":"Patient","id":"' + b"x" * 300 + b'"}',
            b"\xff\xfe not utf-8",
        ]
    )
    items = _records(data + b"\n")
    errors = [(i.line_number, i.reason) for i in items if isinstance(i, ParseError)]
    assert errors == [
        (2, "invalid JSON"),
        (3, "missing resourceType"),
        (4, "missing id"),
        (5, "missing id"),
        (6, "missing id"),
        (7, "not an object"),
        (11, "not an object"),
        (12, "id too long"),
        (13, "invalid JSON"),
    ]
    assert [i.resource_id for i in items if isinstance(i, ParsedResource)] == ["ok1", "ok2"]
    assert secret not in repr(items[1:9])


def test_line_terminators_and_bom() -> None:
    data = b'\xef\xbb\xbf{"resourceType":"A","id":"1"}\r\n{"resourceType":"B","id":"2"} \n\n'
    data += b'{"resourceType":"C","id":"3"}'  # no final newline
    items = _records(data)
    assert [(i.line_number, i.raw) for i in items if isinstance(i, ParsedResource)] == [
        (1, b'{"resourceType":"A","id":"1"}'),
        (2, b'{"resourceType":"B","id":"2"} '),
        (4, b'{"resourceType":"C","id":"3"}'),
    ]


def test_bundle_file_streams_entries_as_their_own_bytes() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:1", "resource": {"resourceType": "Patient", "id": "p", "x": 1.5}},
            {"fullUrl": "urn:2"},
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "o",
                    "subject": {"reference": "Patient/p"},
                }
            },
            {"resource": {"resourceType": "Observation"}},
        ],
    }
    for encoded in (orjson.dumps(bundle, option=orjson.OPT_INDENT_2), orjson.dumps(bundle)):
        assert detect_format(encoded) == "bundle"
        items = list(iter_records(io.BytesIO(encoded)))
        ok = [i for i in items if isinstance(i, ParsedResource)]
        wanted = [bundle["entry"][0]["resource"], bundle["entry"][2]["resource"]]  # type: ignore[index]
        assert [orjson.loads(i.raw) for i in ok] == wanted
        assert all(i.raw in encoded for i in ok)  # the file's own bytes, spacing and all
        if b"\n" not in encoded:
            assert [i.raw for i in ok] == [orjson.dumps(r) for r in wanted]
        assert ok[1].patient_ref == "Patient/p"
        assert [(i.line_number, i.reason) for i in items if isinstance(i, ParseError)] == [
            (2, "entry without resource"),
            (4, "missing id"),
        ]


def test_ndjson_whose_lines_are_bundles_is_not_a_bundle_file() -> None:
    line = b'{"resourceType":"Bundle","id":"b","type":"document","entry":[]}'
    data = line + b"\n" + b'{"resourceType":"Patient","id":"p"}\n'
    assert detect_format(data) == "ndjson"
    items = _records(data)
    assert [i.resource_type for i in items if isinstance(i, ParsedResource)] == [
        "Bundle",
        "Patient",
    ]


def test_non_seekable_stream_is_detected_and_read_whole() -> None:
    data = FIXTURE.read_bytes()

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            chunk = self._inner.read(min(len(buffer), 4096))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    items = list(iter_records(io.BufferedReader(Pipe())))
    assert len(items) == data.count(b"\n")
    assert b"\n".join(i.raw for i in items if isinstance(i, ParsedResource)) + b"\n" == data


def test_parser_memory_is_bounded_by_the_longest_line(tmp_path: Path) -> None:
    """A 20 MB line among many lines: peak allocations stay O(line), not O(file)."""
    big = b'{"resourceType":"Binary","id":"big","data":"' + b"QUJD" * (5 * 1024 * 1024) + b'"}'
    small = FIXTURE.read_bytes()
    path = tmp_path / "big.ndjson"
    with path.open("wb") as f:
        for _ in range(150):
            f.write(small)
        f.write(big + b"\n")
        for _ in range(150):
            f.write(small)
    file_size = path.stat().st_size
    assert file_size > 120 * 1024 * 1024

    tracemalloc.start()
    try:
        count = 0
        big_seen = False
        with path.open("rb") as stream:
            for item in iter_ndjson(stream):
                assert isinstance(item, ParsedResource)
                count += 1
                if item.resource_id == "big":
                    big_seen = item.raw == big
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert big_seen
    assert count == 300 * small.count(b"\n") + 1
    # The 20 MB line is held (and orjson's decoded copy of it); the other ~110 MB are not.
    print(f"parser peak {peak / 1e6:.1f} MB for a {file_size / 1e6:.0f} MB file")
    assert peak < 3 * len(big)
    assert peak < file_size / 2


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "ndjson"),
        (b"not json", "ndjson"),
        (b'{"resourceType":"Patient","id":"p"}\n', "ndjson"),
        (b'{\n  "resourceType": "Bundle",\n  "entry": []\n}\n', "bundle"),
        (b'  {"resourceType":"Bundle","entry":[]}', "bundle"),
    ],
)
def test_detect_format(data: bytes, kind: str) -> None:
    assert detect_format(data) == kind


PAD = b"A" * (2 * 1024 * 1024)  # over LARGE_LINE_BYTES: the event-based path


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            b'{"resourceType":"DocumentReference","id":"d1","pad":"' + PAD + b'",'
            b'"meta":{"lastUpdated":"2024-05-06"},"subject":{"reference":"Patient/p"}}',
            ("DocumentReference", "d1", "2024-05-06", "Patient/p"),
        ),
        (b'{"resourceType":"Binary","pad":"' + PAD + b'"}', "missing id"),
        (b'{"id":"x","pad":"' + PAD + b'"}', "missing resourceType"),
        (b'{"resourceType":"Binary","id":{"a":1},"pad":"' + PAD + b'"}', "missing id"),
        (b'["' + PAD + b'"]', "not an object"),
        (b'{"resourceType":"Binary","id":"b","pad":"' + PAD, "invalid JSON"),
        (b'{"resourceType":"Binary","id":"b","pad":"' + PAD + b'"} {}', "invalid JSON"),
    ],
)
def test_long_lines_parse_like_short_ones(line: bytes, expected: object) -> None:
    item = parse_line(line, 3)
    if isinstance(expected, str):
        assert item == ParseError(3, expected)
    else:
        assert isinstance(item, ParsedResource)
        assert item.raw == line
        fields = (item.resource_type, item.resource_id, item.last_updated, item.patient_ref)
        assert fields == expected
