"""The README's first command runs unattended: started, records landed, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.records.models import Resource
from tests.support import REPO_ROOT, ehi_command, free_port

pytestmark = pytest.mark.slow


def test_demo_lands_records_and_exits(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    result = subprocess.run(
        ehi_command(
            "demo", "--port", str(free_port()), "--data-dir", str(data_dir), "--exit-when-done"
        ),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "records landed for 3/3 patients" in result.stdout
    db = Database(f"sqlite:///{data_dir / 'ehi-bridge.sqlite3'}")
    with db.read_session() as session:
        assert set(session.scalars(select(Export.status))) == {"complete"}
        resources = session.scalar(select(func.count()).select_from(Resource))
    assert resources and f"{resources} FHIR resources" in result.stdout
    db.dispose()


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole process group (the parser process too):
    everything stops with no traceback. The hints name runnable commands and the connect
    page."""
    proc = subprocess.Popen(
        ehi_command("demo", "--port", str(free_port()), "--data-dir", str(tmp_path / "demo")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Ctrl-C stops the demo" in line:
            break
    else:
        proc.kill()
        raise AssertionError("".join(lines))
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    output = "".join(lines) + proc.stdout.read()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    connect = next(line for line in lines if line.strip().startswith("connect "))
    assert "/connect?token=" in connect
    stats = next(line for line in lines if line.strip().startswith("stats "))
    command = stats.split()[-2]
    assert command == "ehi-bridge" or (REPO_ROOT / command).is_file(), stats
