"""Issue 11 on both databases: every byte, every version, every rejected line.

Each test names the numbered item of the issue it shows.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import orjson
import pytest
from sqlalchemy import insert

from ehi_bridge.app import create_api
from ehi_bridge.connections.repository import find
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.records.ingest import ingest_file
from ehi_bridge.records.models import IngestError
from ehi_bridge.records.quarantine import list_errors
from tests.integration.api.factories import TestClient
from tests.integration.dashboard.helpers import add_user, login, settings_for
from tests.integration.records.helpers import (
    new_connection,
    scaled_lines,
    stored,
    versions,
    write_lines,
)
from tests.support import REPO_ROOT, ehi_command

FIDELITY = Path(__file__).resolve().parents[2] / "fixtures" / "records" / "fidelity"
PRETTY = FIDELITY / "searchset-pretty.json"
REPEATS = FIDELITY / "repeats-and-duplicate-keys.ndjson"
BINARY_6MB = (
    b'{"resourceType":"Binary","id":"six-mb","contentType":"application/pdf","data":"'
    + b"JVBERi0x" * (6 * 1024 * 1024 // 8)
    + b'"}'
)


def _repeat_lines() -> list[bytes]:
    return REPEATS.read_bytes().split(b"\n")[:-1]


def _single_line_searchset(lines: list[bytes]) -> bytes:
    entries = b",".join(
        b'{"fullUrl":"https://ehr.example/fhir/'
        + str(n).encode()
        + b'","resource":'
        + line
        + b',"search":{"mode":"match"}}'
        for n, line in enumerate(lines)
    )
    return (
        b'{"type":"searchset","id":"s-1","timestamp":"2026-12-01T00:00:00Z","entry":['
        + entries
        + b'],"resourceType":"Bundle"}'
    )


def _cli(args: list[str], database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "EHI_DATABASE_URL": database_url, "EHI_DATA_DIR": str(tmp_path)}
    return subprocess.run(
        ehi_command(*args), env=env, capture_output=True, cwd=REPO_ROOT, timeout=180
    )


# -- 1. format detection by structure --------------------------------------------------------


def test_1_large_single_line_searchset_with_resource_type_last(
    db: Database, tmp_path: Path
) -> None:
    lines = [*scaled_lines(12), BINARY_6MB]
    path = tmp_path / "searchset.json"
    path.write_bytes(_single_line_searchset(lines))
    assert path.stat().st_size > 9 * 1024 * 1024
    connection_id = new_connection(db)
    report = ingest_file(db, path, connection_id=connection_id, export_id=None)
    assert (report.status, report.errors, report.resources) == ("complete", 0, len(lines))
    assert report.bundle == {"id": "s-1", "type": "searchset", "timestamp": "2026-12-01T00:00:00Z"}
    rows = stored(db, connection_id)
    assert sorted(r.raw for r in rows.values()) == sorted(lines)
    assert orjson.loads(rows[("Binary", "six-mb")].bundle_entry or "") == {
        "fullUrl": f"https://ehr.example/fhir/{len(lines) - 1}",
        "search": "match",
    }


# -- 2 + 6 + round trip: entries as their own bytes, exact on every read path ---------------


def test_2_6_pretty_bundle_round_trips_through_every_read_path(
    db: Database,
    client: TestClient,
    auth: dict[str, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    data = PRETTY.read_bytes()
    connection_id = new_connection(db, "pretty")
    report = ingest_file(db, PRETTY, connection_id=connection_id, export_id=None)
    assert report.bundle == {
        "type": "searchset",
        "id": "b-0001",
        "timestamp": "2026-11-30T10:15:00.000-05:00",
        "total": 5,
    }
    rows = stored(db, connection_id)
    expected = {key: bytes(r.raw) for key, r in rows.items()}
    assert set(expected) == {("Observation", "obs-1"), ("Patient", "p1"), ("Observation", "obs-2")}
    for raw in expected.values():
        assert raw in data  # the file's own bytes
    assert b'"value": 0.00' in expected[("Observation", "obs-1")]

    # GET /api/resources/{connection}/{type}/{id}
    for (rtype, rid), raw in expected.items():
        got = client.get(f"/api/resources/{connection_id}/{rtype}/{rid}", headers=auth)
        assert got.status_code == 200 and got.content == raw
    # The API's JSON list view embeds the bytes as they are.
    page = client.get("/api/resources", params={"connection_id": connection_id}, headers=auth)
    assert page.status_code == 200
    for raw in expected.values():
        assert b'"resource":' + raw in page.content
    assert len(page.json()["items"]) == 3
    # The Bundle export: each entry.resource is the stored bytes.
    bundle = client.get(
        "/api/resources/export",
        params={"connection_id": connection_id, "format": "bundle"},
        headers=auth,
    )
    for raw in expected.values():
        assert b'{"resource":' + raw + b"}" in bundle.content
    assert len(orjson.loads(bundle.content)["entry"]) == 3
    # The NDJSON export: one line each; a pretty-printed resource's line breaks as spaces.
    ndjson = client.get(
        "/api/resources/export", params={"connection_id": connection_id}, headers=auth
    )
    assert sorted(ndjson.content.split(b"\n")[:-1]) == sorted(
        raw.replace(b"\n", b" ") for raw in expected.values()
    )
    # records export --format bundle (the CLI): byte for byte.
    out = tmp_path / "out.json"
    exported = _cli(
        [
            "records",
            "export",
            "--connection",
            connection_id,
            "--format",
            "bundle",
            "--out",
            str(out),
        ],
        database_url,
        tmp_path,
    )
    assert exported.returncode == 0, exported.stderr.decode()
    for raw in expected.values():
        assert b'{"resource":' + raw + b"}" in out.read_bytes()


def test_round_trip_of_a_compact_bundle_through_records_export_ndjson(
    db: Database,
    client: TestClient,
    auth: dict[str, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    decimals = (
        b'{"resourceType":"Observation","id":"d","valueQuantity":{"value":0.00},'
        b'"x":[1e2,-0.0],"s":"\\u00e9\\/"}'
    )
    lines = [*scaled_lines(1)[:40], decimals, BINARY_6MB]
    path = tmp_path / "bundle.json"
    path.write_bytes(_single_line_searchset(lines))
    connection_id = new_connection(db, "compact")
    assert ingest_file(db, path, connection_id=connection_id, export_id=None).status == "complete"
    out = tmp_path / "out.ndjson"
    exported = _cli(
        ["records", "export", "--connection", connection_id, "--out", str(out)],
        database_url,
        tmp_path,
    )
    assert exported.returncode == 0, exported.stderr.decode()
    assert sorted(out.read_bytes().split(b"\n")[:-1]) == sorted(lines)
    got = client.get(f"/api/resources/{connection_id}/Observation/d", headers=auth)
    assert got.content == decimals
    page = client.get(
        "/api/resources",
        params={"connection_id": connection_id, "type": "Observation", "limit": 500},
        headers=auth,
    )
    assert b'"resource":' + decimals in page.content  # 0.00 stays 0.00
    big = client.get(f"/api/resources/{connection_id}/Binary/six-mb", headers=auth)
    assert big.content == BINARY_6MB


# -- 3. versions within one file --------------------------------------------------------------


def test_3_conflicting_repeats_keep_every_version_and_are_visible(
    db: Database,
    client: TestClient,
    auth: dict[str, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    lines = _repeat_lines()
    path = write_lines(tmp_path / "phr.jsonl", [*lines[:6], lines[9]])  # no rejected lines
    # CLI: exit status 3 and the conflicts printed with their lines.
    result = _cli(["import", str(path), "--connection", "phr"], database_url, tmp_path)
    assert result.returncode == 3, result.stderr.decode()
    out = result.stdout.decode()
    assert "conflicts" in out
    assert "conflict CarePlan/183431002: line 3 differs from line 2" in out
    assert "conflict CarePlan/183431002: line 7 differs from line 3" in out

    with db.read_session() as session:
        found = find(session, "phr")
        assert found is not None
        connection_id = found.id
    rows = stored(db, connection_id)
    key = ("CarePlan", "183431002")
    assert (rows[key].raw, rows[key].version) == (lines[9], 3)
    assert versions(db, connection_id, key) == [(1, lines[1]), (2, lines[2])]
    assert rows[("Patient", "p1")].version == 1  # an exact repeat is no new version

    # API: the run's status and report; the quarantine lists each repeat with its lines.
    runs = client.get(f"/api/connections/{connection_id}/ingest-runs", headers=auth).json()
    [run] = runs["items"]
    assert (run["source"], run["status"]) == ("import", "conflicts")
    assert (run["report"]["conflicts"], run["report"]["exact_repeats"]) == (2, 2)
    items = client.get(f"/api/connections/{connection_id}/quarantine", headers=auth).json()["items"]
    assert sorted((i["kind"], i["line_number"], i["previous_line"]) for i in items) == [
        ("conflict", 3, 2),
        ("conflict", 7, 3),
        ("duplicate_keys", 6, None),
        ("exact_repeat", 4, 3),
        ("exact_repeat", 5, 1),
    ]

    # The dashboard's connection page shows the run as "conflicts" and the repeats.
    add_user(db)
    with TestClient(create_api(settings_for(database_url), db)) as dash:
        login(dash)
        page = dash.get(f"/dashboard/connections/{connection_id}")
        assert page.status_code == 200
        assert 'badge s-conflicts">conflicts' in page.text
        assert "conflicting repeats" in page.text and "exact_repeat" in page.text


# -- 4. duplicate JSON keys -------------------------------------------------------------------


def test_4_duplicate_keys_are_reported_per_line_and_never_decide_silently(
    db: Database, tmp_path: Path
) -> None:
    lines = _repeat_lines()
    path = write_lines(tmp_path / "dup.ndjson", [lines[5], lines[6]])
    connection_id = new_connection(db)
    report = ingest_file(db, path, connection_id=connection_id, export_id=None)
    assert (report.duplicate_key_lines, report.errors) == (1, 1)
    rows = stored(db, connection_id)
    assert list(rows) == [("Observation", "o1")]
    assert rows[("Observation", "o1")].raw == lines[5]  # both "status" keys kept
    with db.read_session() as session:
        found = [(e.kind, e.line_number, e.reason) for e in list_errors(session, connection_id)]
    assert ("duplicate_keys", 1, "status") in found
    assert ("rejected", 2, "duplicate key id with different values") in found
    # The pretty Bundle: the Patient's three "gender" keys are kept and reported.
    pretty = ingest_file(db, PRETTY, connection_id=connection_id, export_id=None)
    assert pretty.duplicate_key_lines == 1
    assert stored(db, connection_id)[("Patient", "p1")].raw.count(b'"gender"') == 3


# -- 5. quarantine ----------------------------------------------------------------------------


def test_5_rejected_lines_are_kept_with_their_bytes_and_never_erased(
    db: Database,
    client: TestClient,
    auth: dict[str, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    lines = _repeat_lines()
    huge_invalid = b'{"resourceType":"Binary","id":"cut","data":"' + b"QUJD" * 5000
    path = write_lines(tmp_path / "bad.ndjson", [*lines, huge_invalid])
    connection_id = new_connection(db, "q")
    first = ingest_file(
        db, path, connection_id=connection_id, export_id=None, quarantine_bytes=1000
    )
    assert first.errors == 5 and first.status == "partial"
    # A later import (same NULL export id) erases nothing.
    second = ingest_file(
        db,
        write_lines(tmp_path / "ok.ndjson", lines[:1]),
        connection_id=connection_id,
        export_id=None,
    )
    assert second.status == "complete"

    pages: list[dict[str, object]] = []
    cursor = None
    while True:
        params: dict[str, object] = {"kind": "rejected", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = client.get(
            f"/api/connections/{connection_id}/quarantine", params=params, headers=auth
        ).json()
        pages.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    got = [
        (
            i["run_id"],
            i["line_number"],
            i["reason"],
            base64.b64decode(i["raw_base64"]),
            i["truncated"],
            i["raw_size"],
        )
        for i in pages
    ]
    assert (
        got
        == [
            (
                first.run_id,
                7,
                "duplicate key id with different values",
                lines[6],
                False,
                len(lines[6]),
            ),
            (first.run_id, 8, "invalid JSON", lines[7], False, len(lines[7])),
            (first.run_id, 9, "missing id", lines[8], False, len(lines[8])),
            (first.run_id, 11, "invalid JSON", lines[10], False, len(lines[10])),  # not UTF-8
            (first.run_id, 12, "invalid JSON", huge_invalid[:1000], True, len(huge_invalid)),
        ]
    )

    listed = _cli(
        ["records", "errors", "--connection", connection_id, "--kind", "rejected"],
        database_url,
        tmp_path,
    )
    assert listed.returncode == 0, listed.stderr.decode()
    text = listed.stdout.decode()
    assert f"run {first.run_id} (import) line 9: rejected: missing id" in text
    assert "truncated: first 1000 kept" in text


def test_5_the_import_command_cuts_rejected_lines_at_the_configured_size(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    """`ehi-bridge import` starts its parser before it reads its settings (with the default
    cut); a configured cut must still be the one applied."""
    invalid = b'{"resourceType":"Binary","id":"cut","data":"' + b"QUJD" * 100
    path = write_lines(tmp_path / "cut.ndjson", [_repeat_lines()[0], invalid])
    env = {
        **os.environ,
        "EHI_DATABASE_URL": database_url,
        "EHI_DATA_DIR": str(tmp_path),
        "EHI_QUARANTINE_MAX_BYTES": "20",
    }
    done = subprocess.run(
        ehi_command("import", str(path), "--connection", "cut-size", "--json"),
        env=env,
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr.decode()
    with db.read_session() as session:
        found = find(session, "cut-size")
        assert found is not None
        rejected = list_errors(session, found.id, kind="rejected")
    assert [(e.line_number, bytes(e.raw or b""), e.raw_size, e.truncated) for e in rejected] == [
        (2, invalid[:20], len(invalid), True)
    ]


def test_5_reingest_stores_what_now_parses_and_says_why_not_for_the_rest(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    connection_id = new_connection(db, "re")
    fixed = b'{"resourceType":"Observation","id":"was-rejected","valueQuantity":{"value":0.00}}'
    still_bad = b'{"resourceType":"Observation"}'
    now = utcnow()
    rows = [
        # As an older parser left it (e.g. a Bundle read as one NDJSON line): bytes valid now.
        {
            "kind": "rejected",
            "line_number": 1,
            "reason": "missing id",
            "raw": fixed,
            "raw_size": len(fixed),
            "truncated": False,
        },
        {
            "kind": "rejected",
            "line_number": 2,
            "reason": "missing id",
            "raw": still_bad,
            "raw_size": len(still_bad),
            "truncated": False,
        },
        {
            "kind": "rejected",
            "line_number": 3,
            "reason": "invalid JSON",
            "raw": b'{"a"',
            "raw_size": 9000,
            "truncated": True,
        },
    ]
    with db.session() as session:
        session.execute(
            insert(IngestError),
            [
                {
                    **r,
                    "run_id": None,
                    "export_id": None,
                    "connection_id": connection_id,
                    "created_at": now,
                }
                for r in rows
            ],
        )
    result = _cli(["records", "reingest", "--connection", connection_id], database_url, tmp_path)
    assert result.returncode == 2, result.stderr.decode()
    out = result.stdout.decode()
    assert "re-ingested 1 line(s); 2 stay in quarantine" in out
    assert "line 2): still rejected: missing id" in out
    assert "line 3): only 4 of 9000 bytes were kept; cannot re-ingest" in out
    assert stored(db, connection_id)[("Observation", "was-rejected")].raw == fixed
    again = _cli(["records", "reingest", "--connection", connection_id], database_url, tmp_path)
    assert "re-ingested 0 line(s); 2 stay in quarantine" in again.stdout.decode()


@pytest.mark.parametrize("batch_rows", [2, 5000])
def test_3_versions_across_batches(db: Database, tmp_path: Path, batch_rows: int) -> None:
    lines = _repeat_lines()
    path = write_lines(tmp_path / "v.ndjson", [lines[1], *scaled_lines(1)[:7], lines[2], lines[1]])
    connection_id = new_connection(db)
    report = ingest_file(
        db, path, connection_id=connection_id, export_id=None, batch_rows=batch_rows
    )
    assert (report.conflicts, report.exact_repeats, report.status) == (2, 0, "conflicts")
    key = ("CarePlan", "183431002")
    assert stored(db, connection_id)[key].version == 3
    assert versions(db, connection_id, key) == [(1, lines[1]), (2, lines[2])]
