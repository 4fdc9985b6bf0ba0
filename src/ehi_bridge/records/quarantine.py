"""Ingest runs and the quarantine (``ingest_errors``). All SQL for them is here.

Every ingest is a run (source ``export``, ``import`` or ``reingest``); what it rejected or
noticed is stored under the run, so a later run never erases an earlier one's rows (manual
imports used to share a NULL export id, and each import deleted the last one's errors).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, func, insert, select, update
from sqlalchemy.orm import Session

from ehi_bridge.records.models import IngestError, IngestRun

ERRORS = cast(Table, IngestError.__table__)
RUNS = cast(Table, IngestRun.__table__)
REASON_LENGTH: Final = 255

# (line, reason, kept bytes, size) as the parser process sends a rejected line
Rejected = tuple[int, str, bytes | None, int]
# (kind, line, resource_type, resource_id, previous_line, detail)
Issue = tuple[str, int, str, str, int, str]


def start_run(
    conn: Connection, connection_id: str, export_id: int | None, source: str, at: datetime
) -> int:
    result = conn.execute(
        insert(RUNS).values(
            connection_id=connection_id,
            export_id=export_id,
            source=source,
            status="running",
            started_at=at,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def finish_run(
    conn: Connection, run_id: int, status: str, report: dict[str, Any], at: datetime
) -> None:
    conn.execute(
        update(RUNS).where(RUNS.c.id == run_id).values(status=status, report=report, finished_at=at)
    )


def add_rows(
    conn: Connection,
    *,
    run_id: int,
    connection_id: str,
    export_id: int | None,
    rejected: Sequence[Rejected],
    issues: Sequence[Issue],
    limit_bytes: int,
    at: datetime,
) -> None:
    """Quarantine rejected lines (bytes cut to ``limit_bytes``) and record issues."""
    rows: list[dict[str, Any]] = []
    base = {
        "run_id": run_id,
        "connection_id": connection_id,
        "export_id": export_id,
        "created_at": at,
    }
    for line, reason, kept, size in rejected:
        cut = kept[:limit_bytes] if kept is not None else None
        rows.append(
            {
                **base,
                "kind": "rejected",
                "line_number": line,
                "reason": reason[:REASON_LENGTH],
                "resource_type": None,
                "resource_id": None,
                "previous_line": None,
                "raw": cut,
                "raw_size": size,
                "truncated": cut is not None and len(cut) < size,
            }
        )
    for kind, line, rtype, rid, previous, detail in issues:
        rows.append(
            {
                **base,
                "kind": kind,
                "line_number": line,
                "reason": (detail or kind.replace("_", " "))[:REASON_LENGTH],
                "resource_type": rtype,
                "resource_id": rid,
                "previous_line": previous or None,
                "raw": None,
                "raw_size": None,
                "truncated": False,
            }
        )
    if rows:
        conn.execute(insert(ERRORS), rows)


def list_errors(
    session: Session,
    connection_id: str,
    *,
    kind: str | None = None,
    run_id: int | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[IngestError]:
    """A page of a connection's quarantine in (run, line) order, as row ids grow; pass
    the last row's id as ``after_id`` for the next page."""
    query = select(IngestError).where(IngestError.connection_id == connection_id)
    if kind is not None:
        query = query.where(IngestError.kind == kind)
    if run_id is not None:
        query = query.where(IngestError.run_id == run_id)
    if after_id is not None:
        query = query.where(IngestError.id > after_id)
    return list(session.scalars(query.order_by(IngestError.id).limit(limit)))


def count_errors(session: Session, connection_id: str) -> dict[str, int]:
    """Quarantine rows of a connection by kind (rejected lines not yet re-ingested)."""
    rows = session.execute(
        select(IngestError.kind, func.count())
        .where(IngestError.connection_id == connection_id, IngestError.reingested_at.is_(None))
        .group_by(IngestError.kind)
    )
    return {str(kind): int(n) for kind, n in rows}


def list_runs(session: Session, connection_id: str, limit: int = 20) -> list[IngestRun]:
    return list(
        session.scalars(
            select(IngestRun)
            .where(IngestRun.connection_id == connection_id)
            .order_by(IngestRun.id.desc())
            .limit(limit)
        )
    )


def pending_rejected(
    session: Session, connection_id: str, after_id: int, limit: int
) -> list[IngestError]:
    """Rejected lines not yet re-ingested, by id."""
    return list(
        session.scalars(
            select(IngestError)
            .where(
                IngestError.connection_id == connection_id,
                IngestError.kind == "rejected",
                IngestError.reingested_at.is_(None),
                IngestError.id > after_id,
            )
            .order_by(IngestError.id)
            .limit(limit)
        )
    )


def mark_reingested(session: Session, ids: Sequence[int], at: datetime) -> None:
    if ids:
        session.execute(
            update(IngestError).where(IngestError.id.in_(list(ids))).values(reingested_at=at)
        )
