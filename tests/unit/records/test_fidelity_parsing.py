"""Structure-based format detection, Bundle entries as their own bytes, duplicate keys and
repeats: the pure parsing side of issue 11 (no database)."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import orjson
import pytest

from ehi_bridge.records.bundle import BundleFacts, iter_entries
from ehi_bridge.records.jsonscan import RAW_ELEMENTS, Scanner
from ehi_bridge.records.ndjson import (
    ParsedResource,
    ParseError,
    detect_format,
    duplicate_keys,
    iter_records,
    parse_line,
)
from ehi_bridge.records.seen import CONFLICT, EXACT, FIRST, SeenKeys

FIDELITY = Path(__file__).resolve().parents[2] / "fixtures" / "records" / "fidelity"
SYNTHEA = (
    Path(__file__).resolve().parents[2] / "fixtures" / "records" / "synthea-one-patient.ndjson"
)


def _synthea_lines() -> list[bytes]:
    return [line for line in SYNTHEA.read_bytes().split(b"\n") if line]


def _searchset(lines: list[bytes], *, pretty: bool = False) -> bytes:
    """A searchset Bundle holding ``lines`` as they are, ``resourceType`` as its last key."""
    sep = b",\n    " if pretty else b","
    entries = sep.join(
        b'{"fullUrl":"urn:uuid:'
        + str(n).encode()
        + b'","resource":'
        + line
        + b',"search":{"mode":"match"}}'
        for n, line in enumerate(lines)
    )
    return (
        b'{"type":"searchset","id":"big","total":'
        + str(len(lines)).encode()
        + b',"entry":['
        + entries
        + b'],"resourceType":"Bundle"}'
    )


def _many_lines(copies: int) -> list[bytes]:
    out = []
    for copy in range(copies):
        for line in _synthea_lines():
            rid = orjson.loads(line)["id"]
            old = b'"id":"' + rid.encode() + b'"'
            out.append(line.replace(old, b'"id":"' + f"{copy}-{rid}".encode() + b'"', 1))
    return out


def test_several_mb_single_line_searchset_with_resource_type_last_is_a_bundle() -> None:
    lines = _many_lines(10)
    data = _searchset(lines)
    assert len(data) > 3 * 1024 * 1024 and b"\n" not in data
    assert data.rstrip().endswith(b'"resourceType":"Bundle"}')
    assert detect_format(data) == "bundle"
    facts = BundleFacts()
    items = list(iter_records(io.BytesIO(data), facts))
    assert all(isinstance(i, ParsedResource) for i in items)
    assert [i.raw for i in items] == lines  # each entry.resource byte for byte
    assert facts.facts == {"type": "searchset", "id": "big", "total": len(lines)}
    assert facts.resource_type == "Bundle"
    assert orjson.loads(items[0].entry_meta or "") == {"fullUrl": "urn:uuid:0", "search": "match"}


@pytest.mark.parametrize("read_bytes", [1, 7, 64, 4096])
def test_spans_are_exact_whatever_the_read_size(read_bytes: int) -> None:
    """Chunk boundaries anywhere: inside strings, escapes, numbers, keys."""
    data = (FIDELITY / "searchset-pretty.json").read_bytes()
    doc = json.loads(data)
    facts = BundleFacts()
    stream = io.BytesIO(data)
    scanner_entries = list(_entries_with_read_size(stream, facts, read_bytes))
    assert len(scanner_entries) == len(doc["entry"]) == 4
    for entry, expected in zip(scanner_entries, doc["entry"], strict=True):
        assert entry.raw is not None and entry.raw in data
        assert json.loads(entry.raw) == expected["resource"]
    assert facts.resource_type == "Bundle"
    assert facts.facts["timestamp"] == "2026-11-30T10:15:00.000-05:00"
    assert [e.search_mode for e in scanner_entries] == ["match", "include", "outcome", "match"]


def _entries_with_read_size(stream: io.BytesIO, facts: BundleFacts, size: int):  # type: ignore[no-untyped-def]
    import ehi_bridge.records.bundle as bundle_module

    original = bundle_module.Scanner
    bundle_module.Scanner = lambda s: original(s, read_bytes=size)  # type: ignore[misc,assignment]
    try:
        yield from iter_entries(stream, facts)
    finally:
        bundle_module.Scanner = original  # type: ignore[misc]


def test_pretty_bundle_keeps_decimals_escapes_and_spacing() -> None:
    data = (FIDELITY / "searchset-pretty.json").read_bytes()
    assert detect_format(data) == "bundle"
    items = list(iter_records(io.BytesIO(data)))
    ok = [i for i in items if isinstance(i, ParsedResource)]
    assert [(i.resource_type, i.resource_id) for i in ok] == [
        ("Observation", "obs-1"),
        ("Patient", "p1"),
        ("Observation", "obs-2"),
    ]
    obs = ok[0].raw
    assert b'"value": 0.00' in obs and b'"value": 1e2' in obs and b'"value": -0.0' in obs
    assert b'"mg\\/dL"' in obs  # the escaped slash as sent
    assert b"Ren\\u00e9e" in ok[1].raw  # the \u escape as sent
    assert ok[1].duplicate_keys == ("gender",)  # reported, not collapsed: all three kept
    assert ok[1].raw.count(b'"gender"') == 3
    assert ok[2].raw.startswith(b'{   "resourceType" : "Observation"')
    # The OperationOutcome has no id: reported per entry, with its bytes for the quarantine.
    [outcome] = [i for i in items if isinstance(i, ParseError)]
    assert (outcome.line_number, outcome.reason) == (3, "missing id")
    assert outcome.raw is not None and b"Some results were filtered" in outcome.raw


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "ndjson"),
        (b"not json\n", "ndjson"),
        (b'{"resourceType":"Patient","id":"p"}\n{"resourceType":"Bundle","entry":[]}\n', "ndjson"),
        (b'{"entry":[],"resourceType":"Bundle"}', "bundle"),
        (b'\xef\xbb\xbf{\n "entry": [],\n "resourceType": "Bundle"\n}\n\n', "bundle"),
        (b'{"resourceType":"Bundle","entry":[]}\n{"resourceType":"Patient","id":"p"}\n', "ndjson"),
        (b'{"resourceType":"Patient","id":"p","x":"}{\\"resourceType\\":\\"Bundle\\""}', "ndjson"),
        # Cut short: still a Bundle by its start; the entries before the cut are kept.
        (b'{"resourceType":"Bundle","entry":[', "bundle"),
        (b'{"entry":[],"resourceType":"Bundle"', "ndjson"),  # cut, resourceType last
        (
            b'\n\n {"resourceType":"Bundle","entry":[]}\n{"resourceType":"Patient","id":"p"}',
            "ndjson",
        ),
        (b'\n\n {"resourceType":"Bundle","entry":[]}\n\n', "bundle"),
        (b'{"resourceType":"Bundle",\n"entry":[]}\n{"resourceType":"Patient","id":"p"}', "ndjson"),
        (b'{"resourceType":"Bundle","id":"x\\n","entry":[\n]}', "bundle"),
        (
            b'{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"p"}}]}\n',
            "bundle",
        ),
    ],
)
def test_format_is_decided_by_structure(data: bytes, kind: str) -> None:
    assert detect_format(data) == kind


def test_detection_of_a_long_pretty_bundle_does_not_depend_on_a_prefix() -> None:
    lines = _many_lines(2)
    data = _searchset(lines, pretty=True)
    assert data.index(b'"resourceType":"Bundle"') > 64 * 1024
    assert detect_format(data) == "bundle"
    assert [i.raw for i in iter_records(io.BytesIO(data))] == lines


def test_scanner_keeps_only_what_is_asked_for() -> None:
    big = b'{"a":"' + b"x" * 5_000_000 + b'","b":[1,2,{"c":"}"}]}'
    scanner = Scanner(io.BytesIO(big), read_bytes=64 * 1024)
    scanner.expect(b"{")
    assert scanner.read_key() == "a"
    scanner.skip_value()
    assert scanner.after_member(b"}")
    assert scanner.read_key() == "b"
    assert scanner.read_value() == b'[1,2,{"c":"}"}]'
    assert not scanner.after_member(b"}")


@pytest.mark.parametrize(
    ("raw", "names", "ambiguous"),
    [
        (b'{"resourceType":"Patient","id":"p"}', [], []),
        (b'{"resourceType":"Patient","id":"p","a":{"x":1,"x":2}}', ["x"], []),
        (b'{"resourceType":"Patient","id":"p","id":"p"}', ["id"], []),
        (b'{"resourceType":"Patient","id":"p","id":"q"}', ["id"], ["id"]),
        (b'{"resourceType":"Patient","id":"p","t":"\\u0022:"}', [], []),
        (b'{"resourceType" :"Patient", "id" : "p", "id" :"p2"}', ["id"], ["id"]),
        (b'{"resourceType":"Patient","id":"p","s":"a\\": b"}', [], []),
        # Re-encodes to itself (no search of the line): the same key in sibling objects.
        (b'{"resourceType":"Patient","id":"p","a":[{"x":1},{"x":{"x":2}}]}', [], []),
        # Does not re-encode to itself (1.50 becomes 1.5): the count decides.
        (b'{"resourceType":"Patient","id":"p","v":1.50,"a":{"x":1,"x":2}}', ["x"], []),
        (b'{"resourceType":"Patient","id":"p","v":1.50,"a":{"x":1,"y":2}}', [], []),
    ],
)
def test_duplicate_keys_are_found_exactly(
    raw: bytes, names: list[str], ambiguous: list[str]
) -> None:
    assert duplicate_keys(raw, orjson.loads(raw)) == (names, ambiguous)


def test_an_ambiguous_id_is_rejected_not_filed_under_either() -> None:
    """A first-wins reader sees id p, a last-wins reader q: the line is quarantined."""
    raw = b'{"resourceType":"Observation","id":"p","id":"q"}'
    assert json.loads(raw)["id"] == "q" and orjson.loads(raw)["id"] == "q"
    item = parse_line(raw, 4)
    assert isinstance(item, ParseError)
    assert item.reason == "duplicate key id with different values" and item.raw == raw
    # The same id twice is unambiguous: stored, and the duplicate reported.
    same = parse_line(b'{"resourceType":"Observation","id":"p","id":"p"}', 5)
    assert isinstance(same, ParsedResource) and same.duplicate_keys == ("id",)


def test_duplicate_keys_on_a_large_line_are_found_at_the_top_level() -> None:
    pad = b"A" * (2 * 1024 * 1024)
    raw = b'{"resourceType":"Binary","id":"b","data":"' + pad + b'","id":"c"}'
    item = parse_line(raw, 1)
    assert isinstance(item, ParseError) and "duplicate key id" in item.reason
    ok = parse_line(b'{"resourceType":"Binary","id":"b","x":1,"data":"' + pad + b'","x":2}', 2)
    assert isinstance(ok, ParsedResource) and ok.duplicate_keys == ("x",)


def test_repeats_are_told_apart_in_file_order() -> None:
    seen = SeenKeys()
    a, b = b"a" * 32, b"b" * 32
    key = ("CarePlan", "1")
    try:
        first = seen.classify([(key, a, 2), (key, b, 3), (key, b, 4)])
        later = seen.classify([(key, a, 10), (("Patient", "p"), a, 11), (key, a, 12)])
    finally:
        seen.close()
    assert first == [(FIRST, 0), (CONFLICT, 2), (EXACT, 3)]
    assert later == [(CONFLICT, 3), (FIRST, 0), (EXACT, 10)]


def test_rejected_lines_carry_their_bytes() -> None:
    data = (FIDELITY / "repeats-and-duplicate-keys.ndjson").read_bytes()
    lines = data.split(b"\n")
    items = list(iter_records(io.BytesIO(data)))
    rejected = [(i.line_number, i.reason, i.raw) for i in items if isinstance(i, ParseError)]
    assert rejected == [
        (7, "duplicate key id with different values", lines[6]),
        (8, "invalid JSON", lines[7]),
        (9, "missing id", lines[8]),
        (11, "invalid JSON", lines[10]),  # not UTF-8
    ]


def test_bundle_memory_is_bounded_by_the_largest_entry(tmp_path: Path) -> None:
    """A ~45 MB single-line Bundle (resourceType last) with a 6 MB Binary entry: detection
    and the span scan hold about a read chunk and that entry, never the file."""
    binary = b'{"resourceType":"Binary","id":"b6","data":"' + b"QUJD" * (1536 * 1024) + b'"}'
    lines = _many_lines(100)
    path = tmp_path / "big.json"
    with path.open("wb") as f:
        f.write(b'{"type":"collection","entry":[')
        for n, line in enumerate([*lines[: len(lines) // 2], binary, *lines[len(lines) // 2 :]]):
            f.write((b"," if n else b"") + b'{"resource":' + line + b"}")
        f.write(b'],"resourceType":"Bundle"}')
    size = path.stat().st_size
    assert size > 40 * 1024 * 1024
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            count = 0
            for item in iter_records(stream):
                assert isinstance(item, ParsedResource)
                count += 1
                if item.resource_id == "b6":
                    assert item.raw == binary
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == len(lines) + 1
    print(f"bundle scan peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB file")
    assert peak < 4 * len(binary) and peak < size / 2


def _entries_and_facts(data: bytes) -> tuple[list[tuple[object, ...]], tuple[object, ...]]:
    facts = BundleFacts()
    entries = [
        (e.position, e.raw, e.full_url, e.search_mode, e.is_object)
        for e in iter_entries(io.BytesIO(data), facts)
    ]
    return entries, (facts.facts, facts.resource_type, facts.error, detect_format(data))


def _tricky_entries() -> list[bytes]:
    """Entries that a run of msgspec must not get wrong: a boundary signature inside a
    string and inside a nested array, entries that are not objects or lack a resource,
    invalid JSON, invalid UTF-8, a repeated resource key, odd fullUrl/search values."""
    good = [
        b'{"fullUrl":"urn:%d","resource":%s,"search":{"mode":"match"}}' % (n, line)
        for n, line in enumerate(_synthea_lines())
    ]
    odd = [
        b'{"fullUrl":"x","resource":{"resourceType":"Basic","id":"s","t":"},{\\"fullUrl\\":1"}}',
        b'{"fullUrl":"x","resource":{"resourceType":"Basic","id":"n","a":[{"b":1},{"fullUrl":"z"}]}}',
        b"5",
        b'{"fullUrl":"x"}',
        b'{"fullUrl":"x","resource":{"resourceType":"Basic","id":"bad",}}',
        b'{"fullUrl":"x","resource":{"id":"a"},"resource":{"resourceType":"Basic","id":"d"}}',
        b'{"fullUrl":"x","resource":{"resourceType":"Basic","id":"u","v":"\xff"}}',
        b'{"fullUrl":3,"search":[1],"resource":null}',
        b'{ "fullUrl" : "sp" , "resource" : { "resourceType" : "Basic" , "id" : "sp" } }',
    ]
    out: list[bytes] = []
    for n, entry in enumerate(good):
        out.append(entry)
        if n % 7 == 3:
            out.append(odd[(n // 7) % len(odd)])
    return out


@pytest.mark.parametrize(
    "shape",
    ["compact", "pretty", "first", "truncated", "trailing", "large-entry", "tricky"],
)
def test_entries_decoded_by_runs_equal_the_walk(
    shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path (runs of entries decoded by msgspec) gives exactly what walking each
    entry gives: the same bytes, metadata, positions, facts and errors."""
    lines = _synthea_lines()
    entries = [b'{"fullUrl":"urn:%d","resource":%s}' % (n, line) for n, line in enumerate(lines)]
    if shape == "pretty":
        docs = [json.loads(line) for line in lines]
        bundle = {"type": "searchset", "entry": [{"fullUrl": "u", "resource": d} for d in docs]}
        data = json.dumps({**bundle, "resourceType": "Bundle"}, indent=2).encode()
    elif shape == "first":
        data = b'{"resourceType":"Bundle","entry":[' + b",".join(entries) + b"]}"
    elif shape == "truncated":
        data = b'{"type":"searchset","entry":[' + b",".join(entries)
    elif shape == "trailing":
        data = b'{"entry":[' + b",".join(entries) + b'],"resourceType":"Bundle"} {}'
    elif shape == "large-entry":
        big = b'{"resource":{"resourceType":"Binary","id":"b","data":"' + b"A" * 1_500_000 + b'"}}'
        data = b'{"entry":[' + b",".join([*entries[:50], big, *entries[50:]]) + b"],"
        data += b'"resourceType":"Bundle"}'
    elif shape == "tricky":
        data = b'{"type":"searchset","entry":[' + b",".join(_tricky_entries())
        data += b'],"resourceType":"Bundle","total":3}'
    else:
        data = b'{"type":"searchset","entry":[' + b",".join(entries) + b'],"resourceType":"Bundle"}'
    fast = _entries_and_facts(data)
    monkeypatch.setattr(Scanner, "_decode_run", lambda self, decoder, signature: None)
    assert fast == _entries_and_facts(data)


def test_runs_of_entries_are_decoded_at_once() -> None:
    """Past the first two entries, a Synthea searchset is not walked entry by entry."""
    entries = [
        b'{"fullUrl":"urn:%d","resource":%s}' % (n, r) for n, r in enumerate(_synthea_lines())
    ]
    data = b'{"entry":[' + b",".join(entries) + b'],"resourceType":"Bundle"}'
    scanner = Scanner(io.BytesIO(data))
    scanner.expect(b"{")
    assert scanner.read_key() == "entry"
    scanner.expect(b"[")
    decoded = walked = 0
    for run in scanner.elements(RAW_ELEMENTS):
        if run is None:
            scanner.skip_value()
            walked += 1
        else:
            decoded += len(run)
    assert decoded + walked == len(entries)
    assert walked <= 2  # the first entry (no signature yet) and the last (nothing after it)
