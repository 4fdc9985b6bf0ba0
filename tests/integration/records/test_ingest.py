from __future__ import annotations

import hashlib
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

from ehi_bridge.db.engine import Database
from ehi_bridge.records.ingest import IngestReport, ingest_file
from ehi_bridge.records.repository import mark_connection_revoked, purge_connection
from ehi_bridge.records.writer import ResourceWriter
from tests.integration.records.helpers import (
    FIXTURE,
    duplicate_keys,
    errors,
    fixture_lines,
    new_connection,
    row_count,
    scaled_lines,
    stored,
    versions,
    write_lines,
)


def _types(lines: list[bytes]) -> dict[str, int]:
    return dict(Counter(orjson.loads(line)["resourceType"] for line in lines))


def test_fixture_is_stored_byte_for_byte_and_reconciles(db: Database) -> None:
    connection_id = new_connection(db)
    lines = fixture_lines()
    report = ingest_file(
        db,
        FIXTURE,
        connection_id=connection_id,
        export_id=41,
        expected_total=len(lines),
        expected_by_type=_types(lines),
    )
    assert (report.lines, report.resources, report.inserted) == (len(lines), len(lines), len(lines))
    assert (report.updated, report.unchanged, report.errors, report.duplicates) == (0, 0, 0, 0)
    assert report.status == "complete" and report.complete and report.mismatches == []
    assert report.by_type == dict(sorted(_types(lines).items()))
    orjson.dumps(report.as_dict())  # JSON-serializable

    rows = stored(db, connection_id)
    assert sorted(r.raw for r in rows.values()) == sorted(lines)
    for row in rows.values():
        assert row.content_hash == hashlib.sha256(row.raw).digest()
        assert row.version == 1 and row.export_id == 41 and row.revoked is False
        assert orjson.loads(row.raw)["id"] == row.resource_id
    if db.is_sqlite:  # stored in SQLAlchemy's own text form, so SQL comparisons agree
        with db.read_session() as session:
            texts = set(session.scalars(text("SELECT DISTINCT ingested_at FROM resources")))
        assert len(texts) == 1
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", texts.pop())
    patient = next(r for r in rows.values() if r.resource_type == "Patient")
    condition = next(r for r in rows.values() if r.resource_type == "Condition")
    organization = next(r for r in rows.values() if r.resource_type == "Organization")
    assert patient.patient_ref == f"Patient/{patient.resource_id}"
    assert condition.patient_ref == patient.patient_ref
    assert organization.patient_ref is None


def test_reingest_writes_nothing(db: Database) -> None:
    connection_id = new_connection(db)
    ingest_file(db, FIXTURE, connection_id=connection_id, export_id=None)
    before = {k: (r.version, r.ingested_at, r.id) for k, r in stored(db, connection_id).items()}

    again = ingest_file(db, FIXTURE, connection_id=connection_id, export_id=None)

    assert (again.inserted, again.updated, again.unchanged) == (0, 0, len(before))
    assert again.complete
    after = {k: (r.version, r.ingested_at, r.id) for k, r in stored(db, connection_id).items()}
    assert after == before


def test_changed_content_is_version_two(db: Database, tmp_path: Path) -> None:
    connection_id = new_connection(db)
    lines = fixture_lines()
    ingest_file(
        db, write_lines(tmp_path / "a.ndjson", lines), connection_id=connection_id, export_id=1
    )
    target = orjson.loads(lines[5])
    changed = lines[5].replace(b'"id":"', b'"language":"en","id":"', 1)
    lines[5] = changed

    report = ingest_file(
        db, write_lines(tmp_path / "b.ndjson", lines), connection_id=connection_id, export_id=2
    )

    assert (report.inserted, report.updated, report.unchanged) == (0, 1, len(lines) - 1)
    rows = stored(db, connection_id)
    row = rows[(target["resourceType"], target["id"])]
    assert (row.version, row.raw, row.export_id) == (2, changed, 2)
    assert row.content_hash == hashlib.sha256(changed).digest()
    assert {r.version for k, r in rows.items() if k != (target["resourceType"], target["id"])} == {
        1
    }

    third = ingest_file(
        db, write_lines(tmp_path / "c.ndjson", lines), connection_id=connection_id, export_id=3
    )
    assert (third.inserted, third.updated) == (0, 0)
    assert stored(db, connection_id)[(target["resourceType"], target["id"])].version == 2


def test_malformed_lines_are_recorded_and_the_rest_stored(db: Database, tmp_path: Path) -> None:
    connection_id = new_connection(db)
    good = fixture_lines()[:20]
    huge_valid = b'{"resourceType":"Binary","id":"big","data":"' + b"QUJD" * 700_000 + b'"}'
    huge_invalid = b'{"resourceType":"Binary","id":"big2","data":"' + b"QUJD" * 700_000
    lines = [
        good[0],
        b'{"resourceType":"Patient","id":"x", oops}',  # 2
        good[1],
        b'{"id":"no-type"}',  # 4
        b'{"resourceType":"Observation"}',  # 5
        b"[1, 2, 3]",  # 6
        huge_valid,  # 7
        huge_invalid,  # 8
        b"",  # 9: blank, skipped
        *good[2:],
    ]
    path = write_lines(tmp_path / "bad.ndjson", lines)
    expected_by_type = _types(good)
    expected_by_type["Binary"] = 1
    expected_by_type["Observation"] = 1

    report = ingest_file(
        db,
        path,
        connection_id=connection_id,
        export_id=7,
        expected_total=len(good) + 3,
        expected_by_type=expected_by_type,
    )

    assert report.errors == 5 and report.resources == len(good) + 1
    assert report.lines == len(lines) - 1
    assert report.status == "partial" and not report.complete
    assert {"resource_type": None, "expected": len(good) + 3, "ingested": len(good) + 1} in (
        report.mismatches
    )
    assert {"resource_type": "Observation", "expected": 1, "ingested": 0} in report.mismatches
    assert [(e["line"], e["reason"]) for e in report.error_samples] == [
        (2, "invalid JSON"),
        (4, "missing resourceType"),
        (5, "missing id"),
        (6, "not an object"),
        (8, "invalid JSON"),
    ]
    expected_errors = [
        (7, 2, "invalid JSON"),
        (7, 4, "missing resourceType"),
        (7, 5, "missing id"),
        (7, 6, "not an object"),
        (7, 8, "invalid JSON"),
    ]
    assert errors(db, connection_id) == expected_errors
    rows = stored(db, connection_id)
    assert sorted(r.raw for r in rows.values()) == sorted([*good, huge_valid])

    # Nothing rewritten; each run keeps its own quarantine rows, none erases another's.
    again = ingest_file(db, path, connection_id=connection_id, export_id=7)
    assert (again.inserted, again.updated, again.errors) == (0, 0, 5)
    assert again.run_id != report.run_id
    assert errors(db, connection_id) == sorted(expected_errors * 2)

    # Manual imports (no export id): a later import never erases an earlier one's rows.
    ingest_file(db, path, connection_id=connection_id, export_id=None)
    ingest_file(db, path, connection_id=connection_id, export_id=None)
    manual = [e for e in errors(db, connection_id) if e[0] is None]
    assert sorted((line, reason) for _, line, reason in manual) == sorted(
        [(line, reason) for _, line, reason in expected_errors] * 2
    )


@pytest.mark.parametrize(
    ("total_delta", "type_delta", "status"),
    [(0, 0, "complete"), (1, 0, "partial"), (0, -1, "partial")],
)
def test_reconciliation_against_announced_stats(
    db: Database, total_delta: int, type_delta: int, status: str
) -> None:
    connection_id = new_connection(db)
    lines = fixture_lines()
    by_type = _types(lines)
    by_type["Condition"] += type_delta
    report = ingest_file(
        db,
        FIXTURE,
        connection_id=connection_id,
        export_id=None,
        expected_total=len(lines) + total_delta,
        expected_by_type=by_type,
    )
    assert report.status == status
    assert report.inserted == len(lines)  # stored regardless
    if total_delta:
        assert report.mismatches == [
            {"resource_type": None, "expected": len(lines) + 1, "ingested": len(lines)}
        ]
    if type_delta:
        condition = _types(lines)["Condition"]
        assert report.mismatches == [
            {"resource_type": "Condition", "expected": condition - 1, "ingested": condition}
        ]


def _variant(line: bytes, tag: str) -> bytes:
    return line.replace(b'"id":"', b'"language":"' + tag.encode() + b'","id":"', 1)


@pytest.mark.parametrize("batch_rows", [7, 10_000], ids=["across-batches", "same-batch"])
def test_repeated_key_last_wins_and_counts_once(
    db: Database, tmp_path: Path, batch_rows: int
) -> None:
    connection_id = new_connection(db)
    lines = fixture_lines()[:60]
    key_doc = orjson.loads(lines[3])
    key = (key_doc["resourceType"], key_doc["id"])
    x, y = _variant(lines[3], "x"), _variant(lines[3], "y")
    file_xy = write_lines(tmp_path / "xy.ndjson", [*lines[:3], x, *lines[4:40], y, *lines[40:]])

    first = ingest_file(
        db,
        file_xy,
        connection_id=connection_id,
        export_id=None,
        expected_total=len(lines),
        batch_rows=batch_rows,
    )
    # x then y in one file: two versions, y current, x kept as version 1.
    assert (first.resources, first.inserted, first.updated, first.unchanged) == (60, 60, 0, 0)
    assert (first.duplicates, first.conflicts, first.exact_repeats) == (1, 1, 0)
    assert first.status == "conflicts" and first.complete
    assert first.conflict_samples == [
        {"resource_type": key[0], "resource_id": key[1], "previous_line": 4, "line": 41}
    ]
    assert (stored(db, connection_id)[key].raw, stored(db, connection_id)[key].version) == (y, 2)
    assert versions(db, connection_id, key) == [(1, x)]

    # The same file again: x differs from the stored y (version 3), then y (version 4).
    again = ingest_file(
        db, file_xy, connection_id=connection_id, export_id=None, batch_rows=batch_rows
    )
    assert (again.inserted, again.updated, again.unchanged, again.duplicates) == (0, 1, 59, 1)
    assert (stored(db, connection_id)[key].raw, stored(db, connection_id)[key].version) == (y, 4)
    assert versions(db, connection_id, key) == [(1, x), (2, y), (3, x)]

    # An exact repeat writes nothing and is reported as such.
    file_yy = write_lines(tmp_path / "yy.ndjson", [*lines[:3], y, *lines[4:], y])
    third = ingest_file(
        db, file_yy, connection_id=connection_id, export_id=None, batch_rows=batch_rows
    )
    assert (third.inserted, third.updated, third.unchanged) == (0, 0, 60)
    assert (third.exact_repeats, third.conflicts, third.status) == (1, 0, "complete")
    assert stored(db, connection_id)[key].version == 4
    assert row_count(db, connection_id) == 60 and duplicate_keys(db) == []


def test_connections_are_separate(db: Database) -> None:
    a = new_connection(db, "conn-a")
    b = new_connection(db, "conn-b")
    ingest_file(db, FIXTURE, connection_id=a, export_id=None)
    report = ingest_file(db, FIXTURE, connection_id=b, export_id=None)
    assert report.inserted == len(fixture_lines())
    assert row_count(db, a) == row_count(db, b) == len(fixture_lines())


def test_pretty_bundle_file_is_ingested_as_its_own_bytes(db: Database, tmp_path: Path) -> None:
    connection_id = new_connection(db)
    docs = [orjson.loads(line) for line in fixture_lines()[:30]]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": d} for d in docs],
    }
    path = tmp_path / "bundle.json"
    path.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))

    report = ingest_file(db, path, connection_id=connection_id, export_id=None, expected_total=30)

    assert report.complete and report.inserted == 30
    body = path.read_bytes()
    raws = [r.raw for r in stored(db, connection_id).values()]
    assert sorted(orjson.dumps(orjson.loads(raw)) for raw in raws) == sorted(
        map(orjson.dumps, docs)
    )
    assert all(raw in body and b"\n" in raw for raw in raws)  # the file's own bytes
    again = ingest_file(db, path, connection_id=connection_id, export_id=None)
    assert (again.inserted, again.updated) == (0, 0)


def test_revocation_keep_marks_and_purge_deletes(db: Database, tmp_path: Path) -> None:
    keep = new_connection(db, "keep")
    purge = new_connection(db, "purge")
    bad = write_lines(tmp_path / "bad.ndjson", [*fixture_lines()[:10], b"{"])
    for connection_id in (keep, purge):
        ingest_file(db, bad, connection_id=connection_id, export_id=None)

    with db.session() as session:
        assert mark_connection_revoked(session, keep) == 10
    with db.session() as session:
        assert mark_connection_revoked(session, keep) == 0
        assert purge_connection(session, purge) == 10

    assert all(r.revoked for r in stored(db, keep).values()) and row_count(db, keep) == 10
    assert row_count(db, purge) == 0 and errors(db, purge) == []
    assert len(errors(db, keep)) == 1


def test_larger_file_in_many_batches(db: Database, tmp_path: Path) -> None:
    connection_id = new_connection(db)
    lines = scaled_lines(8)  # ~2,000 resources
    path = write_lines(tmp_path / "scaled.ndjson", lines)
    seen: list[int] = []
    report: IngestReport = ingest_file(
        db,
        path,
        connection_id=connection_id,
        export_id=None,
        expected_total=len(lines),
        progress=seen.append,
        batch_rows=150,
    )
    assert report.complete and report.inserted == len(lines)
    assert row_count(db, connection_id) == len(lines) and duplicate_keys(db) == []
    assert seen == sorted(seen) and seen[-1] == path.stat().st_size == report.bytes_read


def test_insert_of_a_key_stored_meanwhile_falls_back_to_upsert(db: Database) -> None:
    """Another writer stored the key after our lookup: the batch still lands, once."""
    connection_id = new_connection(db)
    line = fixture_lines()[0]
    doc = orjson.loads(line)
    ingest_file(db, FIXTURE, connection_id=connection_id, export_id=None)
    changed = _variant(line, "z")
    with db.engine.connect() as conn:
        writer = ResourceWriter(conn)
        with conn.begin():
            writer.prepare()
        row = (
            connection_id,
            doc["resourceType"],
            doc["id"],
            changed,
            hashlib.sha256(changed).digest(),
            2,
            None,
            None,
            None,
            writer.bind_time(datetime.now(UTC)),
            False,
            None,
        )
        with conn.begin():
            writer.insert_new([row])
    rows = stored(db, connection_id)
    assert rows[(doc["resourceType"], doc["id"])].raw == changed
    assert row_count(db, connection_id) == len(fixture_lines()) and duplicate_keys(db) == []


def test_empty_file(db: Database, tmp_path: Path) -> None:
    connection_id = new_connection(db)
    empty = tmp_path / "empty.ndjson"
    empty.write_bytes(b"\n\n")
    report = ingest_file(db, empty, connection_id=connection_id, export_id=None)
    assert (report.lines, report.resources, report.errors, report.status) == (0, 0, 0, "complete")
    expected = ingest_file(db, empty, connection_id=connection_id, export_id=None, expected_total=3)
    assert expected.status == "partial"
    assert expected.mismatches == [{"resource_type": None, "expected": 3, "ingested": 0}]
