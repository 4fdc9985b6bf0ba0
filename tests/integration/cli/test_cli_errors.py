"""The real `ehi-bridge` process: errors are one line with a meaningful exit code, success
keeps stderr quiet, and a refused import leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from tests.support import REPO_ROOT, ehi_command

SAMPLE = REPO_ROOT / "tests/fixtures/records/synthea-one-patient.ndjson"


def ehi(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EHI_")}
    full_env.update(env)
    return subprocess.run(
        ehi_command(*args),
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no stray .env
        env=full_env,
        timeout=120,
        check=False,
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_unreachable_database_is_one_line_exit_69(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:1/nowhere"
    result = ehi(tmp_path, "stats", EHI_DATABASE_URL=url)
    assert result.returncode == 69
    line = one_line(result.stderr)
    assert line.startswith("error: cannot use the database: ") and "refused" in line
    debug = ehi(tmp_path, "--debug", "stats", EHI_DATABASE_URL=url)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_stats_on_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    result = ehi(tmp_path, "stats", EHI_DATA_DIR=str(tmp_path / "nothing-here"))
    assert result.returncode == 69
    assert "no database at" in one_line(result.stderr)
    assert not (tmp_path / "nothing-here").exists()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """These checks do not depend on the backend: SQLite only, to keep the suite short."""
    return f"sqlite:///{tmp_path / 'cli.sqlite3'}"


def test_success_keeps_stderr_quiet(tmp_path: Path, sqlite_url: str) -> None:
    database_url = sqlite_url
    for args in (["db", "upgrade"], ["stats", "--json"], ["exports", "list"]):
        result = ehi(tmp_path, *args, EHI_DATABASE_URL=database_url)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", args


def test_export_to_a_missing_folder_is_one_line_exit_74(tmp_path: Path, sqlite_url: str) -> None:
    database_url = sqlite_url
    imported = ehi(
        tmp_path, "import", str(SAMPLE), "--connection", "c-1", EHI_DATABASE_URL=database_url
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stderr == ""  # no "INFO alembic… Context impl" line
    written = tmp_path / "out.ndjson"
    exported = ehi(
        tmp_path,
        "records",
        "export",
        "--connection",
        "c-1",
        "--out",
        str(written),
        EHI_DATABASE_URL=database_url,
    )
    assert exported.returncode == 0 and exported.stderr == ""
    assert written.read_bytes().count(b"\n") == SAMPLE.read_bytes().count(b"\n")
    target = tmp_path / "missing" / "dir" / "x.ndjson"
    result = ehi(
        tmp_path,
        "records",
        "export",
        "--connection",
        "c-1",
        "--out",
        str(target),
        EHI_DATABASE_URL=database_url,
    )
    assert result.returncode == 74
    assert one_line(result.stderr) == f"error: No such file or directory: {target}.part"


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"", "is empty"), (b"  \n\n", "is empty"), (b"hello\n", "is not JSON")],
    ids=["empty", "blank", "text"],
)
def test_a_refused_import_creates_nothing(
    tmp_path: Path, database_url: str, db: Database, content: bytes, says: str
) -> None:
    file = tmp_path / "upload.ndjson"
    file.write_bytes(content)
    result = ehi(
        tmp_path, "import", str(file), "--connection", "new-1", EHI_DATABASE_URL=database_url
    )
    assert result.returncode == 65
    assert says in one_line(result.stderr)
    with db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Connection)) == 0


def test_an_invalid_setting_is_named_without_its_value(tmp_path: Path) -> None:
    result = ehi(tmp_path, "stats", EHI_LOG_JSON="secret-looking-value")
    assert result.returncode == 78
    line = one_line(result.stderr)
    assert line.startswith("error: invalid setting EHI_LOG_JSON: ")
    assert "secret-looking-value" not in result.stderr
