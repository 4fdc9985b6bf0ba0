from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ehi_bridge.db.engine import Database
from ehi_bridge.db.migrate import upgrade
from tests.support import (
    create_pg_database,
    drop_pg_database,
    pg_available,
    pg_url_for,
    skip_or_fail,
)

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database that each test clones (CREATE DATABASE … TEMPLATE)."""
    if not pg_available():
        skip_or_fail("PostgreSQL is not reachable")
    name = create_pg_database()
    upgrade(pg_url_for(name))
    yield name
    drop_pg_database(name)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ehi.sqlite3'}"
        upgrade(url)
        yield url
        return
    yield request.getfixturevalue("pg_database_url")


@pytest.fixture
def pg_database_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database (for PostgreSQL-only tests)."""
    name = create_pg_database(template=pg_template)
    try:
        yield pg_url_for(name)
    finally:
        drop_pg_database(name)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()
