"""Shared helpers for the records integration tests."""

from __future__ import annotations

from pathlib import Path

import orjson
from sqlalchemy import func, select

from ehi_bridge.connections.repository import ensure_manual_connection
from ehi_bridge.db.engine import Database
from ehi_bridge.records.models import IngestError, Resource, ResourceVersion

FIXTURE = (
    Path(__file__).resolve().parents[2] / "fixtures" / "records" / "synthea-one-patient.ndjson"
)


def fixture_lines() -> list[bytes]:
    return [line for line in FIXTURE.read_bytes().split(b"\n") if line]


def scaled_lines(copies: int) -> list[bytes]:
    """The fixture repeated ``copies`` times, ids prefixed with the copy number."""
    base = [(line, orjson.loads(line)["id"]) for line in fixture_lines()]
    out: list[bytes] = []
    for copy in range(copies):
        for line, rid in base:
            old = b'"id":"' + rid.encode() + b'"'
            out.append(line.replace(old, b'"id":"' + f"{copy}-{rid}".encode() + b'"', 1))
    return out


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def new_connection(db: Database, name: str = "conn-1") -> str:
    with db.session() as session:
        return ensure_manual_connection(session, name).id


def stored(db: Database, connection_id: str) -> dict[tuple[str, str], Resource]:
    with db.read_session() as session:
        rows = session.scalars(select(Resource).where(Resource.connection_id == connection_id))
        return {(r.resource_type, r.resource_id): r for r in rows}


def row_count(db: Database, connection_id: str) -> int:
    with db.read_session() as session:
        return int(
            session.scalar(select(func.count()).where(Resource.connection_id == connection_id)) or 0
        )


def duplicate_keys(db: Database) -> list[tuple[str, str, str]]:
    with db.read_session() as session:
        rows = session.execute(
            select(Resource.connection_id, Resource.resource_type, Resource.resource_id)
            .group_by(Resource.connection_id, Resource.resource_type, Resource.resource_id)
            .having(func.count() > 1)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def errors(db: Database, connection_id: str) -> list[tuple[int | None, int, str]]:
    with db.read_session() as session:
        rows = session.scalars(
            select(IngestError)
            .where(IngestError.connection_id == connection_id, IngestError.kind == "rejected")
            .order_by(IngestError.line_number, IngestError.id)
        )
        return [(e.export_id, e.line_number, e.reason) for e in rows]


def versions(db: Database, connection_id: str, key: tuple[str, str]) -> list[tuple[int, bytes]]:
    """Earlier versions of one resource: (version, raw), oldest first."""
    with db.read_session() as session:
        rows = session.scalars(
            select(ResourceVersion)
            .where(
                ResourceVersion.connection_id == connection_id,
                ResourceVersion.resource_type == key[0],
                ResourceVersion.resource_id == key[1],
            )
            .order_by(ResourceVersion.version)
        )
        return [(r.version, bytes(r.raw)) for r in rows]
