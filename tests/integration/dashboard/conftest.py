from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ehi_bridge.app import create_api
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from tests.integration.dashboard.helpers import Seeded, TestClient, add_user, seed, settings_for


@dataclass
class Dash:
    client: TestClient
    db: Database
    settings: Settings
    seeded: Seeded


@pytest.fixture
def dash(db: Database, database_url: str) -> Iterator[Dash]:
    settings = settings_for(database_url)
    add_user(db)
    seeded = seed(db)
    with TestClient(create_api(settings, db)) as client:
        yield Dash(client=client, db=db, settings=settings, seeded=seeded)
