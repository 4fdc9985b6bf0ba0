"""Online backup and restore of the SQLite database files (``ehi-bridge backup|restore``).

A running service keeps two SQLite files: the app's (deliveries, connections, records) and
DBOS's system database beside it. A plain copy of either while it runs is not a backup: the
newest commits live in the ``-wal`` file and a copy can catch a page half written. SQLite's
online backup API (``sqlite3.Connection.backup``) copies a database as one consistent
snapshot, taken under a read transaction that writers in WAL mode do not wait for; every
commit made before the copy starts is in it.

The app database is copied first, then DBOS's: an event the app copy shows handed to a
workflow was handed before the DBOS copy began. A manifest records each file's size and
SHA-256, checked again before a restore. The folder appears complete or not at all: it is
written as ``DIR.partial`` and renamed.

PostgreSQL is backed up with ``pg_dump`` (docs/operations.md); these functions refuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ehi_bridge.db.urls import sqlite_file

MANIFEST = "manifest.json"


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why, in one line."""


@dataclass(frozen=True)
class DatabaseFile:
    role: str  # "app" or "dbos"
    path: Path


def database_files(database_url: str, dbos_database_url: str) -> list[DatabaseFile]:
    """The SQLite files behind the two URLs, app first; ``BackupError`` for PostgreSQL."""
    app = sqlite_file(database_url)
    if app is None:
        raise BackupError(
            "the database is not an SQLite file: back up PostgreSQL with pg_dump "
            "(docs/operations.md, Backups)"
        )
    files = [DatabaseFile("app", Path(app))]
    dbos = sqlite_file(dbos_database_url)
    if dbos is not None and Path(dbos).resolve() != Path(app).resolve():
        files.append(DatabaseFile("dbos", Path(dbos)))
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_online(source: Path, target: Path) -> None:
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # all pages in one step: one consistent snapshot
            dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
        finally:
            dst.close()
    finally:
        src.close()


def backup(files: list[DatabaseFile], out: Path) -> dict[str, object]:
    """Copy ``files`` into the new folder ``out``; returns the manifest."""
    if out.exists():
        raise BackupError(f"{out} already exists: back up into a new folder")
    if not files[0].path.is_file():
        raise BackupError(f"no database at {files[0].path}")
    # DBOS's file exists once background processing has run (not with --no-background only).
    files = [f for f in files if f.role == "app" or f.path.is_file()]
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    entries = []
    for file in files:
        target = partial / file.path.name
        _copy_online(file.path, target)
        entries.append(
            {
                "role": file.role,
                "file": target.name,
                "bytes": target.stat().st_size,
                "sha256": _sha256(target),
            }
        )
    manifest: dict[str, object] = {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": entries,
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    partial.rename(out)
    return manifest


def _read_manifest(folder: Path) -> list[dict[str, object]]:
    path = folder / MANIFEST
    if not path.is_file():
        raise BackupError(f"{folder} is not a backup (no {MANIFEST})")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    files = manifest.get("files")
    if manifest.get("format") != 1 or not isinstance(files, list):
        raise BackupError(f"{path} is not a manifest this version reads")
    return files


def restore(folder: Path, files: list[DatabaseFile]) -> list[Path]:
    """Put the backup in ``folder`` at the paths of ``files`` (the configured databases),
    which must not exist yet; every file is checked against the manifest first."""
    entries = {str(e["role"]): e for e in _read_manifest(folder)}
    plan: list[tuple[Path, Path]] = []
    for file in files:
        entry = entries.get(file.role)
        if entry is None and file.role == "dbos":
            continue  # backed up before background processing ever ran
        if entry is None:
            raise BackupError(f"the backup has no {file.role} database")
        source = folder / str(entry["file"])
        if not source.is_file() or _sha256(source) != entry["sha256"]:
            raise BackupError(f"{source} is missing or does not match the manifest")
        for existing in (file.path, Path(f"{file.path}-wal")):
            if existing.exists():
                raise BackupError(
                    f"{existing} exists: restore into a fresh data folder (or move it away)"
                )
        plan.append((source, file.path))
    restored = []
    for source, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".restoring")
        shutil.copyfile(source, partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        partial.rename(target)
        restored.append(target)
    return restored
