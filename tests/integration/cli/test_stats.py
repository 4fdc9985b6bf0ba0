"""`ehi-bridge stats` counts through SQLAlchemy Core; the numbers match the ORM's."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from sqlalchemy import func, select

from ehi_bridge import stats
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.db.models import Base
from ehi_bridge.records.models import Resource
from tests.support import REPO_ROOT, ehi_command

SAMPLE = REPO_ROOT / "tests/fixtures/records/synthea-one-patient.ndjson"


def test_stats_tables_name_real_columns() -> None:
    for light in stats.TABLES:
        model = Base.metadata.tables[light.name]
        assert {c.name for c in light.columns} <= {c.name for c in model.columns}, light.name


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
