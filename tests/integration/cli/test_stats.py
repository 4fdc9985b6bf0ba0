"""`ehi-bridge stats` counts with plain SQL through the driver; the numbers match the ORM's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from ehi_bridge import stats
from ehi_bridge.connections import repository as connections_repo
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.records.models import Resource
from tests.support import REPO_ROOT, ehi_command

SAMPLE = REPO_ROOT / "tests/fixtures/records/synthea-one-patient.ndjson"


def test_every_stats_query_runs_and_counts_what_the_orm_counts(db: Database) -> None:
    with db.session() as session:
        connections_repo.create(session, "org-stats", api_mode="test", status="authorized")
    with db.read_session() as session:
        data = stats.collect(lambda sql: session.execute(text(sql)).all())
        statuses = session.scalars(select(Connection.status)).all()
    assert data["connections_by_status"] == {statuses[0]: 1}
    assert set(data) == set(stats.SCALARS) | set(stats.GROUPS)


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("sqlite:////var/lib/ehi/ehi.sqlite3", ("sqlite", "/var/lib/ehi/ehi.sqlite3")),
        ("sqlite:///relative%20dir/x.db", ("sqlite", "relative dir/x.db")),
        (
            "postgresql+psycopg://u:p%40ss@db:5432/ehi?sslmode=require",
            ("postgresql", "postgresql://u:p%40ss@db:5432/ehi?sslmode=require"),
        ),
        ("postgres://db/ehi", ("postgresql", "postgresql://db/ehi")),
    ],
)
def test_the_driver_target_of_a_database_url(url: str, target: tuple[str, str]) -> None:
    assert stats.driver_target(url) == target


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "mysql://db/ehi"])
def test_stats_refuses_what_it_cannot_open(url: str) -> None:
    with pytest.raises(ValueError):
        stats.driver_target(url)


def test_stats_json_counts_what_is_stored(tmp_path: Path, database_url: str, db: Database) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHI_")}
    env["EHI_DATABASE_URL"] = database_url

    def ehi(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ehi_command(*args), capture_output=True, text=True, cwd=tmp_path, env=env, check=False
        )

    assert ehi("import", str(SAMPLE), "--connection", "c-1").returncode == 0
    result = ehi("stats", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    with db.read_session() as session:
        resources = session.scalar(select(func.count()).select_from(Resource))
        statuses = session.scalars(select(Connection.status)).all()
    assert resources and data["resources"] == resources
    assert data["connections_by_status"] == {statuses[0]: 1}
    assert data["deliveries"] == 0 and data["events_by_status"] == {}
    text = ehi("stats")
    assert text.returncode == 0 and f"resources              {resources}" in text.stdout


def test_stats_counts_without_loading_sqlalchemy(database_url: str) -> None:
    probe = (
        "import sys\n"
        "from ehi_bridge.cli import main\n"
        "try:\n"
        "    main(['stats', '--json'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('SQLALCHEMY', 'sqlalchemy' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHI_")}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "EHI_DATABASE_URL": database_url},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"resources": 0' in result.stdout
    assert "SQLALCHEMY False" in result.stdout
