"""Whether a database's schema is at the head revision, without importing Alembic.

``ehi-bridge import`` and the other one-shot commands check the schema on every run; Alembic
and its templating imports cost more than the check itself (~80 ms of a command's start-up).
The head is read from the migration files (their ``revision`` and ``down_revision``
assignments, which Alembic's generator writes in one fixed form); anything unexpected (no
single head, a file it cannot read) answers "unknown" and the caller asks Alembic
(:func:`ehi_bridge.db.migrate.ensure_schema`), so this is only ever a shortcut.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from sqlalchemy import Engine, inspect, text

VERSIONS_DIR: Final = Path(__file__).parent / "migrations" / "versions"
_REVISION: Final = re.compile(r"""^revision(?:\s*:[^=\n]*)?\s*=\s*["']([^"'\n]+)["']\s*$""", re.M)
_DOWN: Final = re.compile(r"^down_revision(?:\s*:[^=\n]*)?\s*=\s*(.+)$", re.M)
_QUOTED: Final = re.compile(r"""["']([^"'\n]+)["']""")


def head_from_files(directory: Path = VERSIONS_DIR) -> str | None:
    """The single head revision of the migration files in ``directory``; None if there is
    not exactly one, or a file does not have the expected assignments."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(directory.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        revision = _REVISION.search(source)
        down = _DOWN.search(source)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        parents.update(_QUOTED.findall(down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def schema_is_current(engine: Engine) -> bool:
    """True only if the database records exactly the head revision of the files."""
    head = head_from_files()
    if head is None:
        return False
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        found = [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]
    return found == [head]
