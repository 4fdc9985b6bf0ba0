"""The transactional outbox: one row per durable workflow to start.

A row is written in the same transaction as the change that asks for the work (an applied
event, a created export, a deadline found due). The launcher starts the workflow under the
row's ``workflow_id`` after the commit and then stamps ``started_at``. A crash between the
two starts it again under the same id, which the durable engine treats as the same
workflow: each row's work runs once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from ehi_bridge.db.base import Base, BigIntPK, UTCDateTime


class OutboxKind:
    REQUEST_EXPORT = "request_export"  # ask Fasten for the export (subject: export id)
    INGEST_EXPORT = "ingest_export"  # download, ingest, reconcile, notify (export id)
    EXPORT_DEADLINE = "export_deadline"  # no webhook by the deadline: poll, time out (export id)
    CANCEL_EXPORT = "cancel_export"  # the connection was revoked (export id)
    VERIFY_CONNECTION = "verify_connection"  # success after revocation (connection id)
    SYNC_SOURCE = "sync_source"  # pull a smart connection's records from its EHR (export id)

    ALL = (
        REQUEST_EXPORT,
        INGEST_EXPORT,
        EXPORT_DEADLINE,
        CANCEL_EXPORT,
        VERIFY_CONNECTION,
        SYNC_SOURCE,
    )


NOT_STARTED = "started_at IS NULL"


class OutboxItem(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(
            "ix_outbox_not_started",
            "id",
            sqlite_where=text(NOT_STARTED),
            postgresql_where=text(NOT_STARTED),
        ),
    )
