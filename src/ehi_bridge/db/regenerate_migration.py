"""Pre-release helper: rebuild the single initial migration from the models.

Until the first release there is one migration, generated, never hand-edited. Run
``make migration`` after changing a model.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command

from ehi_bridge.db.migrate import MIGRATIONS_DIR, alembic_config


def main() -> None:
    versions = MIGRATIONS_DIR / "versions"
    for old in versions.glob("*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        config = alembic_config(f"sqlite:///{Path(tmp) / 'empty.sqlite3'}")
        command.revision(config, message="initial schema", autogenerate=True, rev_id="0001_initial")
    written = next(versions.glob("*.py"))
    ruff = Path(sys.executable).with_name("ruff")
    subprocess.run([str(ruff), "check", "--fix", "-q", str(written)], check=False)
    subprocess.run([str(ruff), "format", "-q", str(written)], check=True)
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
