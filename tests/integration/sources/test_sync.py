"""Syncs against the sandbox over real HTTP into the records ingest, on both databases:
each profile's quirks, reconciliation with what the sandbox holds, bytes as served,
repeat syncs writing nothing, and each injected fault's outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ehi_bridge.alerts.models import Alert
from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.records.models import Resource
from ehi_bridge.sources import service
from ehi_bridge.sources.fetch import HostLimiter
from ehi_bridge.sources.models import SourceGrant
from tests.integration.sources.conftest import Sandbox, authorize


def _sync(db: Database, settings: Settings, connection_id: str) -> Export:
    export_id = service.start_sync_here(db, connection_id)
    asyncio.run(service.run_sync(db, settings, HostLimiter(5), export_id))
    with db.read_session() as session:
        export = session.get(Export, export_id)
        assert export is not None
        return export


def _stored(db: Database, connection_id: str) -> dict[tuple[str, str], bytes]:
    with db.read_session() as session:
        rows = session.execute(
            select(Resource.resource_type, Resource.resource_id, Resource.raw).where(
                Resource.connection_id == connection_id
            )
        ).all()
    return {(t, i): bytes(raw) for t, i, raw in rows}


def _alerts(db: Database) -> list[tuple[str, dict[str, Any]]]:
    with db.read_session() as session:
        return [(a.kind, dict(a.context)) for a in session.scalars(select(Alert)).all()]


@pytest.mark.parametrize("profile", ["generic", "epic", "cerner", "athena"])
def test_each_profile_syncs_everything_byte_for_byte(
    db: Database, settings: Settings, smart: Sandbox, profile: str
) -> None:
    patient = smart.patients()[0]
    connection_id = authorize(db, settings, f"sandbox-{profile}", patient["id"])
    export = _sync(db, settings, connection_id)
    assert export.status == "complete", export.last_error
    assert export.source == "smart"
    sync = (export.report or {})["sync"]
    assert sync["problems"] == {}
    assert sync["strategy"] == ("everything" if profile == "generic" else "search")
    assert sync["peak_in_flight"] <= 5

    stored = _stored(db, connection_id)
    assert set(stored) == smart.resources(patient["id"])  # reconciliation: 100 %
    assert export.ingested_total == len(stored) == export.stats_total
    # Byte for byte: each stored resource equals what a read of it answers.
    token, _ = service.valid_access_token(db, settings, connection_id)
    base = f"{smart.url}/{profile}/fhir"
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as http:
        for (rtype, rid), raw in sorted(stored.items())[:15]:
            answer = http.get(f"{base}/{rtype}/{rid}", headers={"Accept": "application/fhir+json"})
            assert answer.content == raw, (rtype, rid)

    # A second sync of the unchanged patient writes nothing.
    again = _sync(db, settings, connection_id)
    assert again.status == "complete"
    report = again.report or {}
    assert (report["inserted"], report["updated"], report["unchanged"]) == (0, 0, len(stored))


def test_platform_quirks_are_real(db: Database, settings: Settings, smart: Sandbox) -> None:
    """The generic definition against the Epic-like profile: Observation searches without a
    category are refused, which the epic definition avoids (the test above)."""
    patient = next(p for p in smart.patients() if p["resource_count"] > 300)
    connection_id = authorize(db, settings, "sandbox-epic", patient["id"])
    with db.session() as session:
        grant = session.get(SourceGrant, connection_id)
        assert grant is not None
        grant.platform = "sandbox-cerner"  # searches with no Observation category
    export = _sync(db, settings, connection_id)
    assert export.status == "partial"
    assert export.failure_reason == "bad_request"
    assert "Observation" in (export.report or {})["sync"]["problems"]


def _small(smart: Sandbox) -> str:
    return str(smart.patients()[0]["id"])


def test_rate_limit_is_waited_out(db: Database, settings: Settings, smart: Sandbox) -> None:
    connection_id = authorize(db, settings, "sandbox-cerner", _small(smart))
    smart.fault("rate_limit", profile="cerner", times=1, retry_after=1)
    started = time.monotonic()
    export = _sync(db, settings, connection_id)
    assert export.status == "complete"
    assert time.monotonic() - started >= 1.0
    sync = (export.report or {})["sync"]
    assert sync["retries"] >= 1


def test_a_rate_limit_too_long_fails_the_sync(
    db: Database, settings: Settings, smart: Sandbox
) -> None:
    connection_id = authorize(db, settings, "sandbox-cerner", _small(smart))
    smart.fault("rate_limit", profile="cerner", times=50, retry_after=3600)
    export = _sync(db, settings, connection_id)
    assert (export.status, export.failure_reason) == ("failed", "rate_limited")
    assert (
        "source_sync_failed",
        {"export_id": export.id, "connection_id": connection_id, "reason": "rate_limited"},
    ) in _alerts(db)


@pytest.mark.parametrize(
    ("kind", "reason"), [("forbidden_type", "forbidden"), ("paging_loop", "paging_loop")]
)
def test_a_refused_search_makes_the_sync_partial(
    db: Database, settings: Settings, smart: Sandbox, kind: str, reason: str
) -> None:
    connection_id = authorize(db, settings, "sandbox-cerner", _small(smart))
    smart.fault(kind, profile="cerner", resource_type="Encounter", times=100)
    export = _sync(db, settings, connection_id)
    assert (export.status, export.failure_reason) == ("partial", reason)
    assert (export.report or {})["sync"]["problems"] == {"Encounter": reason}
    kinds = [k for k, _ in _alerts(db)]
    assert "source_sync_partial" in kinds
    with db.read_session() as session:
        connection = session.get(Connection, connection_id)
        assert connection is not None and connection.status == "authorized"


def test_a_broken_json_answer_is_asked_again(
    db: Database, settings: Settings, smart: Sandbox
) -> None:
    patient = _small(smart)
    connection_id = authorize(db, settings, "sandbox-cerner", patient)
    smart.fault("malformed_json", profile="cerner", resource_type="Encounter")
    export = _sync(db, settings, connection_id)
    assert export.status == "complete"
    assert (export.report or {})["sync"]["incidents"] == {"invalid_json": 1}
    assert set(_stored(db, connection_id)) == smart.resources(patient)


def test_expired_tokens_are_refreshed_once(
    db: Database, settings: Settings, smart: Sandbox
) -> None:
    connection_id = authorize(db, settings, "sandbox-cerner", _small(smart))
    smart.fault("expire_tokens", profile="cerner")
    before = smart.token_requests("cerner")
    export = _sync(db, settings, connection_id)
    assert export.status == "complete"
    assert smart.token_requests("cerner") == before + 1


def test_a_revoked_grant_fails_the_sync_and_asks_for_reauthorization(
    db: Database, settings: Settings, smart: Sandbox
) -> None:
    connection_id = authorize(db, settings, "sandbox-cerner", _small(smart))
    smart.fault("invalid_grant", profile="cerner")
    smart.fault("expire_tokens", profile="cerner")
    export = _sync(db, settings, connection_id)
    assert (export.status, export.failure_reason) == ("failed", "reauth_required")
    with db.read_session() as session:
        connection = session.get(Connection, connection_id)
        assert connection is not None and connection.status == "reauth_required"
    kinds = {k for k, _ in _alerts(db)}
    assert {"source_reauth_required", "source_sync_failed"} <= kinds
