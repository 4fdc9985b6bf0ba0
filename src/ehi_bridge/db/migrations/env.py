"""Alembic environment: the URL comes from the caller (``ehi-bridge db upgrade``) or settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from ehi_bridge.db.engine import is_sqlite, make_engine
from ehi_bridge.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=is_sqlite(str(connection.engine.url)),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        # Deliberately lazy: the application's settings only when Alembic runs on its own.
        from ehi_bridge.config import Settings

        url = Settings().resolved_database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


run_migrations_online()
