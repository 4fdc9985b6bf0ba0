"""The schema built by the migrations from empty is exactly the models' schema."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from ehi_bridge.db.engine import Database
from ehi_bridge.db.migrate import head_revision, is_current
from ehi_bridge.db.models import Base
from ehi_bridge.db.revision import head_from_files, schema_is_current


def test_migrations_match_models(db: Database) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_every_model_table_exists_and_schema_is_current(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert is_current(db.engine)
    assert head_revision() is not None


def test_the_quick_schema_check_agrees_with_alembic(db: Database, tmp_path: Path) -> None:
    """``schema_is_current`` (no Alembic import) reads the same head as Alembic and says
    yes only for a database at that head."""
    assert head_from_files() == head_revision()
    assert schema_is_current(db.engine) == is_current(db.engine)
    empty = Database(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    try:
        assert not schema_is_current(empty.engine)
    finally:
        empty.dispose()


def test_the_quick_schema_check_needs_exactly_one_head(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text('revision: str = "a"\ndown_revision: str | None = None\n')
    (tmp_path / "b.py").write_text('revision = "b"\ndown_revision = "a"\n')
    assert head_from_files(tmp_path) == "b"
    (tmp_path / "c.py").write_text('revision = "c"\ndown_revision = "a"\n')
    assert head_from_files(tmp_path) is None  # two heads: Alembic decides
    (tmp_path / "c.py").write_text('revision = "c"\ndown_revision = ("a", "b")\n')
    assert head_from_files(tmp_path) == "c"  # a merge
    (tmp_path / "d.py").write_text("something else\n")
    assert head_from_files(tmp_path) is None
