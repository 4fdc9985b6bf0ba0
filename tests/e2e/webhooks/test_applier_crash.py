"""kill -9 of the background process mid-batch: every event applied once, every follow-up
started once (the outbox row stamped, DBOS holding exactly one workflow of that id)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database, normalize_url
from ehi_bridge.outbox.models import OutboxItem
from ehi_bridge.webhooks.models import InboxEvent
from tests.e2e.webhooks.test_delivery import wait_until
from tests.integration.webhooks.test_batch_apply import store, success
from tests.support import ehi_command
from tests.webhook_client import envelope

pytestmark = pytest.mark.slow

CONNECTIONS = 600
# Enough that a kill lands mid-drain: the applier takes tens of thousands of these a second.
TESTS = 20_000


def _applied(db: Database) -> int:
    with db.read_session() as session:
        return int(session.scalar(select(func.count()).where(InboxEvent.status == "applied")) or 0)


def _dbos_workflow_ids(env: dict[str, str]) -> list[str]:
    settings = Settings(_env_file=None, database_url=env["EHI_DATABASE_URL"])  # type: ignore[call-arg]
    url = normalize_url(settings.resolved_dbos_database_url)
    table = "workflow_status" if url.startswith("sqlite") else "dbos.workflow_status"
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(text(f"SELECT workflow_uuid FROM {table}")))
    finally:
        engine.dispose()


def _wait_applied(db: Database, count: float, timeout: float) -> None:
    """Poll often: at the applier's pace a coarse poll would see the whole backlog done."""
    deadline = time.monotonic() + timeout
    while _applied(db) < count:
        assert time.monotonic() < deadline, "the worker did not get that far"
        time.sleep(0.01)


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            ehi_command("worker"), env={**os.environ, **env}, stdout=out, stderr=out
        )


def test_sigkill_mid_batch_then_restart_applies_once_and_starts_once(
    service_env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    events = [success(f"crash-{n}", at) for n in range(CONNECTIONS)]
    events += [envelope("webhook.test", {"hello": "world"}) for _ in range(TESTS)]
    store(db, events)
    env = {
        **service_env,
        "EHI_APPLY_BATCH_SIZE": "64",
        # Exports are asked of a closed port: the workflows start, fail and back off.
        "EHI_FASTEN_API_URL": "http://127.0.0.1:9/v1",
    }
    log = tmp_path / "worker.log"
    kills = 0
    for fraction in (0.2, 0.6):
        proc = _worker(env, log)
        try:
            _wait_applied(db, fraction * len(events), timeout=180)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
        time.sleep(0.2)
    assert kills == 2 and _applied(db) < len(events)

    proc = _worker(env, log)
    try:
        wait_until(lambda: _applied(db) == len(events), timeout=180)

        def all_started() -> bool:
            with db.read_session() as session:
                waiting = session.scalar(
                    select(func.count()).where(OutboxItem.started_at.is_(None))
                )
            return waiting == 0

        wait_until(all_started, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    with db.read_session() as session:
        assert session.scalar(select(func.max(InboxEvent.apply_count))) == 1
        assert session.scalar(select(func.min(InboxEvent.apply_count))) == 1
        outbox = list(session.scalars(select(OutboxItem.workflow_id)))
    assert len(outbox) == CONNECTIONS  # one export request per connection
    started = _dbos_workflow_ids(env)
    assert sorted(w for w in started if w in set(outbox)) == sorted(outbox)
    assert len(started) == len(set(started))
