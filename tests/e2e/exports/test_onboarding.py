"""Many patients onboard at once: every one's records land (issue 9).

Twenty patients connect at the same moment through the Fasten simulator (real HTTP, the
real ``ehi-bridge serve`` process). Each connection's export must be requested, downloaded
and ingested, and its stored resources must match what the simulator put in the file. No
wall-clock speed is asserted: the wait is generous, only the outcome is checked.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from ehi_bridge.connections.models import Connection
from ehi_bridge.exports.models import Export
from ehi_bridge.records.models import Resource
from ehi_bridge.simulator.datasets import patient_count
from tests.e2e.conftest import LiveStack

pytestmark = pytest.mark.slow

PATIENTS = 20
WAIT_SECONDS = 240.0


def _stored_by_connection(stack: LiveStack) -> dict[str, dict[str, int]]:
    """org_connection_id -> {resource type: stored rows}."""
    with stack.db.read_session() as session:
        rows = session.execute(
            select(Connection.org_connection_id, Resource.resource_type, func.count())
            .join(Connection, Connection.id == Resource.connection_id)
            .group_by(Connection.org_connection_id, Resource.resource_type)
        ).all()
    out: dict[str, dict[str, int]] = {}
    for org_connection_id, resource_type, count in rows:
        out.setdefault(org_connection_id, {})[resource_type] = count
    return out


def _export_statuses(stack: LiveStack) -> Counter[str]:
    with stack.db.read_session() as session:
        return Counter(session.scalars(select(Export.status)))


@pytest.mark.timeout(WAIT_SECONDS + 180)
def test_twenty_patients_connecting_at_once_all_get_their_records(
    live_stack: LiveStack,
) -> None:
    stack = live_stack
    sim = stack.sim.sim
    # All at once: twenty connection_success webhooks queued in one go, distinct patients
    # of the sample (it has 13; past that they repeat under new connections).
    connections = [
        sim.connect(external_id=f"onboard-{i}", patient_index=i % patient_count())
        for i in range(PATIENTS)
    ]
    ids = {c.org_connection_id for c in connections}

    def expected() -> dict[str, dict[str, int]]:
        """What the simulator's files hold, per connection (its exports' own stats)."""
        out = {}
        for export in sim.list_exports():
            if export.org_connection_id in ids and export.status == "success":
                out[export.org_connection_id] = export.file.stats.total_by_resource_type
        return out

    deadline = time.monotonic() + WAIT_SECONDS
    landed: set[str] = set()
    while time.monotonic() < deadline:
        want = expected()
        stored = _stored_by_connection(stack)
        landed = {cid for cid in ids if cid in want and stored.get(cid) == want[cid]}
        # Every resource stored comes before the export is reconciled and marked complete.
        if landed == ids and set(_export_statuses(stack)) == {"complete"}:
            break
        time.sleep(1.0)
    assert landed == ids, (
        f"records landed for {len(landed)}/{PATIENTS} patients after {WAIT_SECONDS:.0f} s; "
        f"simulator exports finished: {len(expected())}/{PATIENTS}; "
        f"our exports by status: {dict(_export_statuses(stack))}"
    )

    # One export asked of Fasten per connection, and one of ours, complete and reconciled.
    per_connection = Counter(e.org_connection_id for e in sim.list_exports())
    assert {cid: per_connection[cid] for cid in ids} == dict.fromkeys(ids, 1)
    want = expected()
    with stack.db.read_session() as session:
        exports = session.execute(
            select(Connection.org_connection_id, Export)
            .join(Connection, Connection.id == Export.connection_id)
            .where(Connection.org_connection_id.in_(ids))
        ).all()
    assert Counter(cid for cid, _ in exports) == dict.fromkeys(ids, 1)
    for cid, export in exports:
        total = sum(want[cid].values())
        assert export.status == "complete"
        assert export.stats_total == export.ingested_total == total
        assert export.stats_by_type == want[cid]
