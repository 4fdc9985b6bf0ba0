"""FHIR resources exactly as received, their earlier versions, ingest runs, and the
quarantine: lines that could not be ingested (with their bytes) and what a run noticed
about the others (repeats, conflicting versions, duplicate JSON keys)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from ehi_bridge.db.base import Base, BigIntPK, UTCDateTime


class Resource(Base):
    __tablename__ = "resources"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id"))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(255))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    content_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    version: Mapped[int] = mapped_column(Integer, default=1)
    last_updated: Mapped[str | None] = mapped_column(String(64))
    patient_ref: Mapped[str | None] = mapped_column(String(255))
    export_id: Mapped[int | None] = mapped_column(BigInteger)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(default=False)
    # A Bundle entry's fullUrl and search.mode, as JSON text (None for NDJSON lines).
    bundle_entry: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("connection_id", "resource_type", "resource_id"),
        Index("ix_resources_connection_type_id", "connection_id", "resource_type", "id"),
    )


class ResourceVersion(Base):
    """A version of a resource that a later one replaced (the current one is in
    ``resources``): every distinct version is kept, numbered in the order received."""

    __tablename__ = "resource_versions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    content_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    export_id: Mapped[int | None] = mapped_column(BigInteger)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("connection_id", "resource_type", "resource_id", "version"),)


class IngestRun(Base):
    """One ingest of one file: a Fasten export, a manual import, or a re-ingest of the
    quarantine. Its report (counts, conflicts, the Bundle's own facts) once it ends."""

    __tablename__ = "ingest_runs"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(String(64), index=True)
    export_id: Mapped[int | None] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(16))  # export | import | reingest
    status: Mapped[str] = mapped_column(String(16))  # running | complete | conflicts | partial
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class IngestError(Base):
    """The quarantine. ``kind`` ``rejected``: a line not stored, its bytes in ``raw`` (cut
    to the configured limit: then ``truncated`` and ``raw_size`` tell how much was kept).
    Other kinds report a stored line: ``conflict`` (a new version of a key repeated in the
    file), ``exact_repeat``, ``duplicate_keys``. Rows belong to their run and are never
    deleted by a later one."""

    __tablename__ = "ingest_errors"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    export_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    connection_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="rejected")
    line_number: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(255))
    resource_type: Mapped[str | None] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(255))
    previous_line: Mapped[int | None] = mapped_column(Integer)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    raw_size: Mapped[int | None] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    reingested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("run_id", "kind", "line_number"),)
