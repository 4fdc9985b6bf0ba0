"""`ehi-bridge backup` while deliveries arrive, `ehi-bridge restore` into a fresh data
folder: every delivery answered before the backup began is in the restored database."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ehi_bridge.db.engine import Database
from ehi_bridge.webhooks.models import InboxEvent
from tests.support import ehi_command, free_port, running
from tests.webhook_client import TEST_SECRET, envelope, signed

pytestmark = pytest.mark.slow


class Sender:
    """Posts signed deliveries one after another until stopped; remembers each answered one."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                event_id = str(uuid.uuid4())
                body, headers = signed(envelope("test.backup_probe", {}, event_id=event_id))
                if client.post(self.url, content=body, headers=headers).is_success:
                    with self.lock:
                        self.answered.append(event_id)

    def snapshot(self) -> set[str]:
        with self.lock:
            return set(self.answered)


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ehi_command(*args), capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_backup_during_deliveries_restores_every_answered_one(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EHI_")}
    env = {**clean, "EHI_DATA_DIR": str(tmp_path / "data"), "EHI_TEST_WEBHOOK_SECRETS": TEST_SECRET}
    serve = ehi_command("serve", "--port", str(port))
    with running(serve, env, f"{base}/healthz", tmp_path / "serve.log", timeout=90):
        sender = Sender(f"{base}/webhooks/fasten/test")
        sender.thread.start()
        try:
            # The background process (a child of serve) opens the DBOS file once it has
            # started: back up a service that runs both.
            dbos_file = tmp_path / "data" / "ehi-bridge.dbos.sqlite3"
            while len(sender.snapshot()) < 50 or not dbos_file.exists():
                sender.stop.wait(0.05)
            answered_before = sender.snapshot()
            made = cli(env, tmp_path, "backup", "--out", str(tmp_path / "backup"))
            assert made.returncode == 0, made.stderr
            answered_after = len(sender.snapshot())
        finally:
            sender.stop.set()
            sender.thread.join(timeout=30)
    assert answered_after > len(answered_before), "no delivery arrived during the backup"
    assert {line.split()[0] for line in made.stdout.splitlines()} == {"app", "dbos"}

    fresh = {**clean, "EHI_DATA_DIR": str(tmp_path / "fresh")}
    restored = cli(fresh, tmp_path, "restore", str(tmp_path / "backup"))
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "fresh" / "ehi-bridge.dbos.sqlite3").is_file()
    db = Database(f"sqlite:///{tmp_path / 'fresh' / 'ehi-bridge.sqlite3'}")
    try:
        with db.read_session() as session:
            stored = set(session.scalars(select(InboxEvent.event_id)))
    finally:
        db.dispose()
    assert answered_before <= stored
    stats = cli(fresh, tmp_path, "stats", "--json")
    assert stats.returncode == 0 and stats.stderr == ""
    again = cli(fresh, tmp_path, "restore", str(tmp_path / "backup"))
    assert again.returncode == 1 and "exists" in again.stderr


def test_backup_refuses_postgresql_and_an_existing_folder(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EHI_")}
    pg = {**clean, "EHI_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/x"}
    refused = cli(pg, tmp_path, "backup", "--out", str(tmp_path / "b"))
    assert refused.returncode == 1 and "pg_dump" in refused.stderr
    (tmp_path / "exists").mkdir()
    sqlite = {**clean, "EHI_DATA_DIR": str(tmp_path / "data")}
    assert cli(sqlite, tmp_path, "db", "upgrade").returncode == 0
    taken = cli(sqlite, tmp_path, "backup", "--out", str(tmp_path / "exists"))
    assert taken.returncode == 1 and "already exists" in taken.stderr
