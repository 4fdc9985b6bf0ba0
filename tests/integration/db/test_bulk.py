"""``insert_rows`` writes what SQLAlchemy's own INSERT would, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import bindparam, insert, select, update

from ehi_bridge.connections.repository import CONNECTIONS
from ehi_bridge.db.bulk import ListStatement, insert_rows
from ehi_bridge.db.engine import Database


def test_rows_read_back_as_sqlalchemys_insert_writes_them(db: Database) -> None:
    at = datetime(2026, 12, 4, 23, 0, 0, 123, tzinfo=UTC)
    elsewhere = datetime(2026, 12, 4, 18, 0, 0, tzinfo=timezone(timedelta(hours=-5)))
    base = {"api_mode": "test", "status": "authorized", "created_at": at, "updated_at": at}
    ours = [
        {**base, "id": "bulk-1", "org_connection_id": "org-1", "status_changed_at": elsewhere},
        {**base, "id": "bulk-2", "org_connection_id": "org-2", "external_id": "user-2"},
        # A value that differs from the row before's: processed anew, not reused.
        {**base, "id": "bulk-3", "org_connection_id": "org-3", "created_at": elsewhere},
    ]
    # SQLAlchemy's executemany wants the same keys in every row; ours does not.
    same_keys = {"status_changed_at": None, "external_id": None}
    theirs = [
        {
            **same_keys,
            **row,
            "id": f"sa-{row['id']}",
            "org_connection_id": f"sa-{row['org_connection_id']}",
        }
        for row in ours
    ]
    with db.session() as session:
        insert_rows(session.connection(), CONNECTIONS, ours)
        session.execute(insert(CONNECTIONS), theirs)
    with db.read_session() as session:
        rows = {row.id: row._asdict() for row in session.execute(select(CONNECTIONS))}
    for row in ours:
        stored, reference = rows[row["id"]], rows[f"sa-{row['id']}"]
        assert stored["source"] == "fasten"  # the column's default, as SQLAlchemy applies it
        assert stored["status_changed_at"] == reference["status_changed_at"]
        assert {k: v for k, v in stored.items() if k not in ("id", "org_connection_id")} == {
            k: v for k, v in reference.items() if k not in ("id", "org_connection_id")
        }
    assert rows["bulk-1"]["status_changed_at"] == elsewhere  # the same moment, read as UTC
    assert rows["bulk-2"]["external_id"] == "user-2"
    assert rows["bulk-3"]["created_at"] == elsewhere


def test_a_list_statement_reads_and_writes_what_sqlalchemys_own_execution_does(
    db: Database,
) -> None:
    at = datetime(2026, 12, 5, 4, 0, 0, 250, tzinfo=UTC)
    later = datetime(2026, 12, 5, 9, 30, tzinfo=timezone(timedelta(hours=5)))
    rows = [
        {"id": f"list-{n}", "org_connection_id": f"org-{n}", "api_mode": "test"}
        | {"status": "pending", "created_at": at, "updated_at": at}
        | ({"status_changed_at": later, "external_id": "user"} if n % 2 else {})
        for n in range(5)
    ]
    with db.session() as session:
        insert_rows(session.connection(), CONNECTIONS, rows)
    org_ids = bindparam("org_ids", expanding=True)
    query = select(CONNECTIONS).where(CONNECTIONS.c.org_connection_id.in_(org_ids))
    wanted = ["org-1", "org-3", "org-4", "org-missing"]
    mark = (
        update(CONNECTIONS)
        .where(CONNECTIONS.c.org_connection_id.in_(org_ids))
        .values(
            status="authorized", updated_at=bindparam("now", type_=CONNECTIONS.c.updated_at.type)
        )
    )
    with db.session() as session:
        ours = ListStatement(query.order_by(CONNECTIONS.c.id), "org_ids").execute(
            session.connection(), wanted, {}
        )
        theirs = session.execute(query.order_by(CONNECTIONS.c.id), {"org_ids": wanted}).all()
        assert ours == [tuple(row) for row in theirs]
        assert [row[0] for row in ours] == ["list-1", "list-3", "list-4"]
        assert ListStatement(query, "org_ids").execute(session.connection(), [], {}) == []
        ListStatement(mark, "org_ids").execute(
            session.connection(), ["org-0", "org-2"], {"now": later}
        )
    with db.read_session() as session:
        stored = {row.id: row for row in session.execute(select(CONNECTIONS))}
    assert [stored[f"list-{n}"].status for n in range(5)] == [
        "authorized", "pending", "authorized", "pending", "pending"
    ]  # fmt: skip
    assert stored["list-0"].updated_at == later  # the same moment, read back as UTC
    assert stored["list-1"].status_changed_at == later
