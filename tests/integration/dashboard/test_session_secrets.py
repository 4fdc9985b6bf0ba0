"""Session secrets: without EHI_SESSION_SECRET every process on a database shares one
generated secret; with a list, the first signs and all verify (rotation)."""

from __future__ import annotations

from ehi_bridge.app import create_api
from ehi_bridge.config import Settings
from ehi_bridge.dashboard.security import session_secrets
from ehi_bridge.db.engine import Database
from ehi_bridge.deps import AppContext
from tests.integration.dashboard.helpers import TestClient, add_user, login, settings_for


def client_for(settings: Settings, db: Database) -> TestClient:
    return TestClient(create_api(settings, db))


def test_unset_secret_is_generated_once_and_shared_through_the_database(
    database_url: str,
) -> None:
    settings = Settings(database_url=database_url)
    first_db, second_db = Database(database_url), Database(database_url)  # two "processes"
    try:
        first = session_secrets(AppContext(settings=settings, db=first_db))
        second = session_secrets(AppContext(settings=settings, db=second_db))
    finally:
        first_db.dispose()
        second_db.dispose()
    assert first == second and len(first) == 1 and len(first[0]) >= 48


def test_configured_list_first_signs_all_verify(database_url: str, db: Database) -> None:
    add_user(db)
    old = settings_for(database_url, session_secret="old-secret-0123456789")
    rotating = settings_for(
        database_url, session_secret="new-secret-012345678,old-secret-0123456789"
    )
    new_only = settings_for(database_url, session_secret="new-secret-012345678")
    with client_for(old, db) as before:
        login(before)
        cookies = dict(before.cookies)
    with client_for(rotating, db) as during:
        during.cookies.update(cookies)
        assert during.get("/dashboard", follow_redirects=False).status_code == 200
        during.cookies.clear()
        login(during)
        rotated_cookies = dict(during.cookies)
    with client_for(new_only, db) as after:
        after.cookies.update(rotated_cookies)
        assert after.get("/dashboard", follow_redirects=False).status_code == 200
        after.cookies.clear()
        after.cookies.update(cookies)
        assert after.get("/dashboard", follow_redirects=False).status_code != 200
