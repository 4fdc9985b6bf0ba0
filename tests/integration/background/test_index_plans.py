"""The statements that take work off a backlog are planned on their indexes even when the
tables' statistics are stale (PostgreSQL; see ``ehi_bridge.db.plans``).

Stale is the normal state during an onboarding: the inbox, the outbox and connections grow
faster than autovacuum analyzes them. Here they are filled and never analyzed, and every
statement the applier and the launcher run on them is explained inside its own transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, insert

from ehi_bridge.config import Settings
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.outbox import repository as outbox_repo
from ehi_bridge.outbox.models import OutboxItem, OutboxKind
from ehi_bridge.webhooks import repository as inbox_repo
from ehi_bridge.webhooks.service import apply_batch
from tests.integration.webhooks.helpers import store_new_connections

BACKLOG = 3000
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]
WATCHED = ("from inbox_events", "from connections", "from outbox")


@contextmanager
def explained(db: Database) -> Iterator[dict[str, str]]:
    """Each SELECT on a watched table, as PostgreSQL plans it at that moment (statement →
    plan), explained with its own parameters on its own connection and transaction."""
    plans: dict[str, str] = {}

    def explain(
        _conn: Any, cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool
    ) -> None:
        text = " ".join(statement.split()).lower()
        if many or not text.startswith("select") or not any(t in text for t in WATCHED):
            return
        with cursor.connection.cursor() as explaining:
            explaining.execute("EXPLAIN " + statement, parameters)
            plans[text] = "\n".join(row[0] for row in explaining.fetchall())

    event.listen(db.engine, "before_cursor_execute", explain)
    try:
        yield plans
    finally:
        event.remove(db.engine, "before_cursor_execute", explain)


def assert_index_plans(plans: dict[str, str], *tables: str) -> None:
    for table in tables:
        assert any(f"from {table}" in statement for statement in plans), (table, list(plans))
    for statement, plan in plans.items():
        assert "Seq Scan" not in plan and "Sort" not in plan, (statement, plan)


def test_the_applier_finds_its_backlog_and_connections_by_index(pg_database_url: str) -> None:
    db = Database(pg_database_url)
    try:
        store_new_connections(db, "plan", BACKLOG, date=T0)
        assert apply_batch(db, SETTINGS, limit=256, now=T0).claimed == 256
        with explained(db) as plans:
            result = apply_batch(db, SETTINGS, limit=256, now=T0)
            with db.read_session() as session:
                assert inbox_repo.any_due(session, utcnow())
        assert len(result.applied) == 256
        assert_index_plans(plans, "inbox_events", "connections")
    finally:
        db.dispose()


def test_the_launcher_finds_the_workflows_to_start_by_index(pg_database_url: str) -> None:
    db = Database(pg_database_url)
    try:
        with db.session() as session:
            session.execute(
                insert(OutboxItem),
                [
                    {
                        "workflow_id": f"plan-{n}",
                        "kind": OutboxKind.EXPORT_DEADLINE,
                        "subject": str(n),
                        "created_at": T0,
                    }
                    for n in range(BACKLOG)
                ],
            )
            outbox_repo.mark_started(session, [f"plan-{n}" for n in range(BACKLOG // 2)], T0)
        with explained(db) as plans, db.session() as session:
            claimed = outbox_repo.claim_not_started(session, 100)
        assert [item.workflow_id for item in claimed][:1] == [f"plan-{BACKLOG // 2}"]
        assert_index_plans(plans, "outbox")
    finally:
        db.dispose()
