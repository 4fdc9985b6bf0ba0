"""Scheduled re-syncs: the launcher's sweep writes a sync (export + outbox row) for each
authorized SMART connection whose last sync is older than the setting."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from ehi_bridge.config import Settings
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.outbox.models import OutboxItem
from ehi_bridge.sources import service
from ehi_bridge.sources.models import SourceGrant
from tests.integration.sources.conftest import Sandbox, authorize


def test_due_connections_get_a_sync_once(db: Database, settings: Settings, smart: Sandbox) -> None:
    due = authorize(db, settings, "sandbox-generic", smart.patients()[0]["id"])
    fresh = authorize(db, settings, "sandbox-generic", smart.patients()[0]["id"])
    now = utcnow()
    with db.session() as session:
        for connection_id, age in ((due, 7), (fresh, 1)):
            session.execute(
                update(SourceGrant)
                .where(SourceGrant.connection_id == connection_id)
                .values(last_synced_at=now - timedelta(hours=age))
            )
    assert service.sweep_resyncs(db, settings, now) == 0  # the setting is off by default
    every_six = settings.model_copy(update={"source_resync_hours": 6.0})
    assert service.sweep_resyncs(db, every_six, now) == 1
    assert service.sweep_resyncs(db, every_six, now) == 0  # one in progress: not again
    with db.read_session() as session:
        exports = session.scalars(select(Export)).all()
        assert [(e.connection_id, e.source, e.trigger, e.status) for e in exports] == [
            (due, "smart", "schedule", "downloading")
        ]
        kinds = session.scalars(select(OutboxItem.workflow_id)).all()
    assert kinds == [f"sync-{exports[0].id}"]
