"""The real ``ehi-bridge serve`` syncing from the SMART sandbox, killed with SIGKILL
mid-sync, right after the answer of a (rotating) refresh was stored. After the restart the
sync resumes and finishes with exact counts and no duplicates, the stored refresh token
still works, and a second sync of the unchanged patient writes nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.exports import service as exports_service
from ehi_bridge.exports.models import Export
from ehi_bridge.records.models import Resource, ResourceVersion
from ehi_bridge.simulator.smart.server import SmartSandbox
from ehi_bridge.sources import service
from ehi_bridge.sources.models import SourceGrant
from tests.e2e.conftest import ServerFactory
from tests.integration.sources.conftest import REDIRECT, Sandbox, authorize

pytestmark = pytest.mark.slow


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60.0, what: str = "", poll: float = 0.02
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def smart() -> Iterator[Sandbox]:
    box = SmartSandbox()
    box.start()
    try:
        yield Sandbox(box)
    finally:
        box.stop()


def _generation(db: Database, connection_id: str) -> int:
    with db.read_session() as session:
        grant = session.get(SourceGrant, connection_id)
        return grant.generation if grant is not None else 0


def _exports(db: Database, connection_id: str) -> list[Export]:
    with db.read_session() as session:
        return list(
            session.scalars(
                select(Export).where(Export.connection_id == connection_id).order_by(Export.id)
            )
        )


def test_sigkill_mid_sync_right_after_a_refresh_then_exact_counts(
    tmp_path: Path,
    service_env: dict[str, str],
    database_url: str,
    start_service: ServerFactory,
    smart: Sandbox,
) -> None:
    env = {
        **service_env,
        "EHI_SMART_SANDBOX_URL": smart.url,
        "EHI_SOURCE_REDIRECT_URL": REDIRECT,
        "EHI_SWEEP_INTERVAL_SECONDS": "0.5",
    }
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        smart_sandbox_url=smart.url,
        source_redirect_url=REDIRECT,
    )
    db = Database(database_url)
    patient = next(p for p in smart.patients() if 1000 < p["resource_count"] < 2500)
    expected = smart.resources(patient["id"])
    port_env = dict(env)
    try:
        with start_service(port_env, name="first") as (proc, _base):
            smart.fault("slow", profile="cerner", delay_ms=5)
            connection_id = authorize(db, settings, "sandbox-cerner", patient["id"], sync=True)
            # SIGKILL mid-sync, right after the sandbox answered a rotating refresh.
            wait_for(lambda: smart.stats()["requests"] > 20, what="sync under way")
            # The sandbox counts a token request when it arrives, before it rotates, so its
            # stats cannot say "answered"; the grant's generation changes in the very
            # transaction that stores the answer, before the new token is used.
            before = smart.token_requests("cerner")
            generation = _generation(db, connection_id)
            smart.fault("expire_tokens", profile="cerner")
            wait_for(
                lambda: _generation(db, connection_id) > generation,
                what="the refresh answer stored",
                poll=0.001,
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert smart.token_requests("cerner") == before + 1
        assert _exports(db, connection_id)[0].status == "downloading"

        smart.control("DELETE", "/faults")
        with start_service(port_env, name="second"):
            export = wait_for(
                lambda: next(
                    (e for e in _exports(db, connection_id) if e.status == "complete"), None
                ),
                what="the sync to complete",
            )
            with db.read_session() as session:
                stored = set(
                    session.execute(
                        select(Resource.resource_type, Resource.resource_id).where(
                            Resource.connection_id == connection_id
                        )
                    ).all()
                )
                versions = session.scalar(select(func.count()).select_from(ResourceVersion))
                connection = session.get(Connection, connection_id)
            assert {tuple(k) for k in stored} == expected  # exact, reconciled
            assert export.ingested_total == len(expected) and versions == 0  # no duplicates
            assert connection is not None and connection.status == "authorized"

            # The refresh token stored before the first kill still works (rotated, not lost).
            with db.session() as session:
                session.execute(
                    update(SourceGrant)
                    .where(SourceGrant.connection_id == connection_id)
                    .values(expires_at=utcnow() - timedelta(seconds=1))
                )
            access, _ = service.valid_access_token(db, settings, connection_id)

            # A second sync of the unchanged patient writes nothing.
            second = exports_service.request_export(db, connection_id, "manual")
            done = wait_for(
                lambda: next(
                    (
                        e
                        for e in _exports(db, connection_id)
                        if e.id == second.id and e.status == "complete"
                    ),
                    None,
                ),
                what="the second sync",
            )
            report = done.report or {}
            assert (report["inserted"], report["updated"]) == (0, 0)
            assert report["unchanged"] == len(expected)
        # No tokens, no patient ids in the service's logs.
        logs = b"".join(p.read_bytes() for p in tmp_path.glob("*.log"))
        assert logs and access.encode() not in logs and patient["id"].encode() not in logs
    finally:
        db.dispose()
