"""Reads of stored FHIR resources (API, CLI) and the connection-wide purge / revoke.

Counts, keyset pages, single resources, and NDJSON / Bundle streams that never hold more
than one chunk of rows. The ingest's writes are in :mod:`ehi_bridge.records.writer`; runs
and the quarantine in :mod:`ehi_bridge.records.quarantine`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from ehi_bridge.db.engine import Database
from ehi_bridge.records.models import IngestError, IngestRun, Resource, ResourceVersion


def purge_connection(session: Session, connection_id: str) -> int:
    """Delete every stored resource and ingest error of a connection; rows deleted."""
    result = session.execute(delete(Resource).where(Resource.connection_id == connection_id))
    session.execute(delete(IngestError).where(IngestError.connection_id == connection_id))
    session.execute(delete(IngestRun).where(IngestRun.connection_id == connection_id))
    session.execute(delete(ResourceVersion).where(ResourceVersion.connection_id == connection_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


def mark_connection_revoked(session: Session, connection_id: str) -> int:
    """Keep a revoked connection's resources, flagged ``revoked``; rows newly flagged."""
    result = session.execute(
        update(Resource)
        .where(Resource.connection_id == connection_id, Resource.revoked.is_(False))
        .values(revoked=True)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _of(connection_ids: Sequence[str]) -> Any:
    if len(connection_ids) == 1:
        return Resource.connection_id == connection_ids[0]
    return Resource.connection_id.in_(list(connection_ids))


def count_by_type(session: Session, connection_ids: Sequence[str]) -> dict[str, int]:
    """Number of stored resources per resource type, sorted by type."""
    if not connection_ids:
        return {}
    rows = session.execute(
        select(Resource.resource_type, func.count())
        .where(_of(connection_ids))
        .group_by(Resource.resource_type)
        .order_by(Resource.resource_type)
    )
    return {str(rtype): int(n) for rtype, n in rows}


def count_resources(
    session: Session, connection_ids: Sequence[str], resource_type: str | None = None
) -> int:
    if not connection_ids:
        return 0
    query = select(func.count()).select_from(Resource).where(_of(connection_ids))
    if resource_type is not None:
        query = query.where(Resource.resource_type == resource_type)
    return int(session.scalar(query) or 0)


def list_resources(
    session: Session,
    *,
    connection_ids: Sequence[str],
    resource_type: str | None = None,
    after_id: int | None = None,
    limit: int,
) -> list[Resource]:
    """One page ordered by the row id; pass the last row's ``id`` as ``after_id`` for the
    next page (keyset pagination; index ``ix_resources_connection_type_id``)."""
    if not connection_ids or limit <= 0:
        return []
    query = select(Resource).where(_of(connection_ids))
    if resource_type is not None:
        query = query.where(Resource.resource_type == resource_type)
    if after_id is not None:
        query = query.where(Resource.id > after_id)
    return list(session.scalars(query.order_by(Resource.id).limit(limit)))


def get_resource(
    session: Session, connection_ids: Sequence[str], resource_type: str, resource_id: str
) -> Resource | None:
    """The resource with this type and id among these connections (the newest row if two
    connections hold the same key)."""
    if not connection_ids:
        return None
    return session.scalars(
        select(Resource)
        .where(
            _of(connection_ids),
            Resource.resource_type == resource_type,
            Resource.resource_id == resource_id,
        )
        .order_by(Resource.id.desc())
        .limit(1)
    ).first()


def _raw_rows(
    session: Session, connection_ids: Sequence[str], resource_type: str | None, chunk_rows: int
) -> Iterator[bytes]:
    query = select(Resource.raw).where(_of(connection_ids))
    if resource_type is not None:
        query = query.where(Resource.resource_type == resource_type)
    query = query.order_by(Resource.connection_id, Resource.resource_type, Resource.id)
    # stream_results: a server-side cursor on PostgreSQL; yield_per bounds the rows fetched.
    result = session.execute(
        query.execution_options(stream_results=True, yield_per=chunk_rows)
    ).scalars()
    for raw in result:
        yield bytes(raw)


def iter_raw(
    db: Database,
    connection_ids: Sequence[str],
    resource_type: str | None = None,
    *,
    chunk_rows: int = 500,
    chunk_bytes: int = 1024 * 1024,
) -> Iterator[bytes]:
    """NDJSON of the stored bytes: chunks of whole lines, each line ending in ``\\n``.

    A resource stored with line breaks (a pretty-printed Bundle entry; in valid JSON they
    can only be whitespace between tokens) has them written as spaces: NDJSON needs one
    line per resource. Every other resource is its stored bytes exactly.

    One read transaction (a consistent snapshot) for the whole stream; memory is one chunk.
    Ordered by connection, type, then ingest order.
    """
    if not connection_ids:
        return
    with db.read_session() as session:
        buffer: list[bytes] = []
        size = 0
        for raw in _raw_rows(session, connection_ids, resource_type, chunk_rows):
            if b"\n" in raw or b"\r" in raw:  # pretty-printed: one line, same length
                raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
            buffer.append(raw)
            buffer.append(b"\n")
            size += len(raw) + 1
            if size >= chunk_bytes or len(buffer) >= 2 * chunk_rows:
                yield b"".join(buffer)
                buffer.clear()
                size = 0
        if buffer:
            yield b"".join(buffer)


def iter_bundle(
    db: Database,
    connection_ids: Sequence[str],
    resource_type: str | None = None,
    *,
    bundle_type: str = "collection",
    chunk_rows: int = 500,
    chunk_bytes: int = 1024 * 1024,
) -> Iterator[bytes]:
    """A FHIR Bundle (``collection`` or ``searchset``) of the stored resources, streamed:
    ``{"resourceType":"Bundle","type":…,"total":N,"entry":[{"resource":<raw>},…]}``."""
    if bundle_type not in ("collection", "searchset"):
        raise ValueError("bundle_type must be collection or searchset")
    with db.read_session() as session:
        total = count_resources(session, connection_ids, resource_type) if connection_ids else 0
        head = {"resourceType": "Bundle", "type": bundle_type, "total": total}
        yield orjson.dumps(head)[:-1] + b',"entry":['
        if connection_ids:
            buffer: list[bytes] = []
            size = 0
            first = True
            for raw in _raw_rows(session, connection_ids, resource_type, chunk_rows):
                buffer.append(b'{"resource":' if first else b',{"resource":')
                buffer.append(raw)
                buffer.append(b"}")
                first = False
                size += len(raw) + 14
                if size >= chunk_bytes or len(buffer) >= 3 * chunk_rows:
                    yield b"".join(buffer)
                    buffer.clear()
                    size = 0
            if buffer:
                yield b"".join(buffer)
        yield b"]}"
