"""The real CLI in a subprocess: ``ehi-bridge import`` then ``ehi-bridge records export``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
from sqlalchemy import select

from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.records.ingest import ingest_file
from tests.integration.records.helpers import (
    FIXTURE,
    duplicate_keys,
    fixture_lines,
    row_count,
    scaled_lines,
    stored,
    write_lines,
)
from tests.support import REPO_ROOT, ehi_command


def _run(args: list[str], database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "EHI_DATABASE_URL": database_url, "EHI_DATA_DIR": str(tmp_path)}
    return subprocess.run(
        ehi_command(*args), env=env, capture_output=True, cwd=REPO_ROOT, timeout=120
    )


def test_import_then_export_reproduces_the_lines(database_url: str, tmp_path: Path) -> None:
    imported = _run(
        ["import", str(FIXTURE), "--connection", "org-conn-1", "--external-id", "user-7", "--json"],
        database_url,
        tmp_path,
    )
    assert imported.returncode == 0, imported.stderr.decode()
    report = orjson.loads(imported.stdout)
    assert report["status"] == "complete" and report["inserted"] == len(fixture_lines())

    out = tmp_path / "export.ndjson"
    exported = _run(
        ["records", "export", "--connection", "org-conn-1", "--out", str(out)],
        database_url,
        tmp_path,
    )
    assert exported.returncode == 0, exported.stderr.decode()
    assert sorted(out.read_bytes().split(b"\n")[:-1]) == sorted(fixture_lines())

    to_stdout = _run(
        ["records", "export", "--connection", "org-conn-1", "--out", "-"], database_url, tmp_path
    )
    assert to_stdout.returncode == 0 and to_stdout.stdout == out.read_bytes()

    again = _run(
        ["import", str(FIXTURE), "--connection", "org-conn-1", "--json"], database_url, tmp_path
    )
    assert again.returncode == 0
    assert (orjson.loads(again.stdout)["inserted"], orjson.loads(again.stdout)["updated"]) == (0, 0)

    db = Database(database_url)
    try:
        with db.read_session() as session:
            connections = list(session.scalars(select(Connection)))
        assert [(c.org_connection_id, c.external_id, c.source) for c in connections] == [
            ("org-conn-1", "user-7", "manual")
        ]
    finally:
        db.dispose()


def test_import_reports_partial_with_exit_code_2(database_url: str, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.ndjson", [*fixture_lines()[:5], b"{not json"])
    result = _run(["import", str(path), "--connection", "c"], database_url, tmp_path)
    assert result.returncode == 2
    out = result.stdout.decode()
    assert "partial" in out and "line 6: invalid JSON" in out
    unknown = _run(
        ["records", "export", "--connection", "nope", "--out", "-"], database_url, tmp_path
    )
    assert unknown.returncode == 1


def test_sigkill_mid_ingest_then_rerun_is_exact(database_url: str, tmp_path: Path) -> None:
    lines = scaled_lines(60)  # ~15,000 resources, ~23 MB
    path = write_lines(tmp_path / "big.ndjson", lines)
    env = {**os.environ, "EHI_DATABASE_URL": database_url, "EHI_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        ehi_command("import", str(path), "--connection", "crash"),
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = Database(database_url)
    try:
        connection_id = None
        committed = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with db.read_session() as session:
                    connection_id = session.scalar(
                        select(Connection.id).where(Connection.org_connection_id == "crash")
                    )
                committed = row_count(db, connection_id) if connection_id else 0
            except Exception:  # schema not created yet by the child
                committed = 0
            if committed > 0:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "the import finished before it was killed"
        assert connection_id is not None
        committed = row_count(db, connection_id)
        assert 0 < committed < len(lines)

        report = ingest_file(
            db, path, connection_id=connection_id, export_id=None, expected_total=len(lines)
        )

        assert report.complete and report.resources == len(lines)
        assert report.inserted + report.unchanged == len(lines) and report.updated == 0
        assert report.unchanged == committed
        assert row_count(db, connection_id) == len(lines)
        assert duplicate_keys(db) == []
        assert sorted(r.raw for r in stored(db, connection_id).values()) == sorted(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        db.dispose()
