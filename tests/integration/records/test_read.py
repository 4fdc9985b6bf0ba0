from __future__ import annotations

from collections import Counter

import orjson

from ehi_bridge.db.engine import Database
from ehi_bridge.records.ingest import ingest_file
from ehi_bridge.records.repository import (
    count_by_type,
    get_resource,
    iter_bundle,
    iter_raw,
    list_resources,
)
from tests.integration.records.helpers import FIXTURE, fixture_lines, new_connection


def _setup(db: Database) -> tuple[str, str]:
    a = new_connection(db, "read-a")
    b = new_connection(db, "read-b")
    ingest_file(db, FIXTURE, connection_id=a, export_id=None)
    return a, b


def test_count_by_type(db: Database) -> None:
    a, b = _setup(db)
    expected = Counter(orjson.loads(line)["resourceType"] for line in fixture_lines())
    with db.read_session() as session:
        assert count_by_type(session, [a]) == dict(sorted(expected.items()))
        assert count_by_type(session, [b]) == {}
        assert count_by_type(session, [a, b]) == dict(sorted(expected.items()))
        assert count_by_type(session, []) == {}


def test_keyset_pages_cover_everything_once(db: Database) -> None:
    a, b = _setup(db)
    seen: list[int] = []
    after: int | None = None
    with db.read_session() as session:
        while True:
            page = list_resources(session, connection_ids=[a, b], after_id=after, limit=17)
            if not page:
                break
            seen.extend(r.id for r in page)
            after = page[-1].id
        assert seen == sorted(seen) and len(seen) == len(set(seen)) == len(fixture_lines())

        conditions = list_resources(
            session, connection_ids=[a], resource_type="Condition", limit=1000
        )
        assert conditions and {r.resource_type for r in conditions} == {"Condition"}
        rest = list_resources(
            session,
            connection_ids=[a],
            resource_type="Condition",
            after_id=conditions[9].id,
            limit=1000,
        )
        assert [r.id for r in rest] == [r.id for r in conditions[10:]]
        assert list_resources(session, connection_ids=[b], limit=10) == []


def test_get_resource_only_within_given_connections(db: Database) -> None:
    a, b = _setup(db)
    line = fixture_lines()[0]
    doc = orjson.loads(line)
    with db.read_session() as session:
        found = get_resource(session, [a], doc["resourceType"], doc["id"])
        assert found is not None and found.raw == line
        assert get_resource(session, [b], doc["resourceType"], doc["id"]) is None
        assert get_resource(session, [a], doc["resourceType"], "nope") is None


def test_iter_raw_is_the_stored_ndjson(db: Database) -> None:
    a, b = _setup(db)
    chunks = list(iter_raw(db, [a], chunk_rows=20, chunk_bytes=10_000))
    assert len(chunks) > 5 and all(c.endswith(b"\n") for c in chunks)
    body = b"".join(chunks)
    assert sorted(body.split(b"\n")[:-1]) == sorted(fixture_lines())
    only = b"".join(iter_raw(db, [a], "Patient")).split(b"\n")[:-1]
    assert [orjson.loads(x)["resourceType"] for x in only] == ["Patient"]
    assert b"".join(iter_raw(db, [b])) == b""


def test_iter_bundle_is_a_valid_bundle(db: Database) -> None:
    a, b = _setup(db)
    body = b"".join(iter_bundle(db, [a], chunk_rows=10, chunk_bytes=5_000))
    bundle = orjson.loads(body)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert bundle["total"] == len(fixture_lines()) == len(bundle["entry"])
    assert sorted(orjson.dumps(e["resource"]) for e in bundle["entry"]) == sorted(
        orjson.dumps(orjson.loads(line)) for line in fixture_lines()
    )
    empty = orjson.loads(b"".join(iter_bundle(db, [b], bundle_type="searchset")))
    assert empty == {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
    typed = orjson.loads(b"".join(iter_bundle(db, [a], "Encounter")))
    assert typed["total"] == len(typed["entry"]) > 0
    assert {e["resource"]["resourceType"] for e in typed["entry"]} == {"Encounter"}
