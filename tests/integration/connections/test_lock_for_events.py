"""The applier's connection locks: a connection new to two concurrent appliers is created
once, by the first; the second waits for it and finds it (PostgreSQL, where appliers in
several processes share a backlog)."""

from __future__ import annotations

import threading
import time

from ehi_bridge.connections.repository import lock_for_events, save_locked
from ehi_bridge.db.engine import Database


def test_a_second_applier_waits_for_the_first_ones_new_connection(pg_database_url: str) -> None:
    first, second = Database(pg_database_url), Database(pg_database_url)
    planned = threading.Event()
    saved_at: list[float] = []
    created: list[str] = []

    def first_applier() -> None:
        with first.session() as session:
            (connection,) = lock_for_events(session, {"race-1": "test"}).values()
            assert connection.insert is not None  # new to this applier
            connection.status = "authorized"
            planned.set()
            time.sleep(0.5)  # the second applier asks meanwhile
            save_locked(session, [connection])
            created.append(connection.id)
            # Before the commit: the second applier may return the moment it is done.
            saved_at.append(time.monotonic())

    thread = threading.Thread(target=first_applier)
    try:
        thread.start()
        assert planned.wait(10)
        with second.session() as session:
            (connection,) = lock_for_events(session, {"race-1": "test"}).values()
            returned_at = time.monotonic()
            assert connection.insert is None  # found, not created a second time
            assert (connection.id, connection.status) == (created[0], "authorized")
        assert returned_at >= saved_at[0]  # it waited for the first one's commit
    finally:
        thread.join(10)
        first.dispose()
        second.dispose()
