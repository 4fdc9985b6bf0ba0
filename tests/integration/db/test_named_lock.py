"""The named lock: one holder at a time across processes, and nothing held in the database."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from ehi_bridge.db.engine import Database
from ehi_bridge.db.named_lock import named_lock

HOLDER = """
import sys, time
from ehi_bridge.db.engine import Database
from ehi_bridge.db.named_lock import named_lock
with named_lock(Database(sys.argv[1]), "refresh:c-1"):
    print("held", flush=True)
    time.sleep(1.5)
    open(sys.argv[2], "w").close()  # the last thing done while holding it
"""


def test_one_holder_across_processes_and_no_database_lock_while_held(
    db: Database, tmp_path: Path
) -> None:
    released = tmp_path / "released"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, db.url, str(released)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # While another process holds the lock, this one still writes at once: the lock
        # holds no write lock (SQLite) and no transaction (PostgreSQL).
        if db.sqlite_path is not None:  # no waiting at all: "database is locked" if held
            raw = sqlite3.connect(db.sqlite_path, timeout=0, isolation_level=None)
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("ROLLBACK")
            raw.close()
        else:
            with db.session() as session:
                session.execute(text("SET LOCAL lock_timeout = 1"))
                session.execute(text("UPDATE alembic_version SET version_num = version_num"))
        with named_lock(db, "refresh:c-2"):  # another name is free
            pass
        assert not released.exists()
        with named_lock(db, "refresh:c-1"):  # the same name waits for the holder
            assert released.exists()
    finally:
        holder.kill()
        holder.wait()
