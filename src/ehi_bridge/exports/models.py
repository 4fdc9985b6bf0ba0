"""One EHI export of one connection: requested, awaited, downloaded, ingested, reconciled."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ehi_bridge.db.base import Base, BigIntPK, UTCDateTime


class Export(Base):
    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id"), index=True)
    task_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    failure_reason: Mapped[str | None] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(
        String(16), default="auto"
    )  # auto|manual|retry|webhook|schedule
    # fasten: Fasten Connect's export file; smart: a sync from the EHR's FHIR API (sources/).
    source: Mapped[str] = mapped_column(String(16), default="fasten", server_default="fasten")
    requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    succeeded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    file_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The event that announced the file (its body holds the download links).
    success_event_id: Mapped[str | None] = mapped_column(String(255))
    stats_total: Mapped[int | None] = mapped_column(Integer)
    stats_by_type: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ingested_total: Mapped[int | None] = mapped_column(Integer)
    ingested_by_type: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    bytes_downloaded: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_exports_status_created", "status", "created_at"),)
