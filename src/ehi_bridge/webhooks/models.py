"""The inbox: every verified Fasten delivery, stored raw before it is answered."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, LargeBinary, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from ehi_bridge.db.base import Base, BigIntPK, UTCDateTime


class InboxStatus:
    RECEIVED = "received"  # committed, not yet applied
    RETRY = "retry"  # an attempt failed; applied again from ``next_attempt_at``
    APPLIED = "applied"
    IGNORED = "ignored"  # unknown type: stored, nothing to apply
    PARKED = "parked"  # failed after the allowed attempts; replay from the API/CLI

    ALL = (RECEIVED, RETRY, APPLIED, IGNORED, PARKED)
    UNPROCESSED = (RECEIVED, RETRY)


# Rows past ``received`` (SQL, for the partial index and the queries that can use it).
HANDED_ON = "status != 'received'"


class InboxEvent(Base):
    __tablename__ = "inbox_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(255))  # unique per api_mode
    webhook_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(128), index=True)
    api_mode: Mapped[str] = mapped_column(String(8))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivery_count: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default=InboxStatus.RECEIVED)
    org_connection_id: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    apply_count: Mapped[int] = mapped_column(Integer, default=0)
    replays: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # Test and live are separate Fasten accounts: the same id in both is two events.
        UniqueConstraint("event_id", "api_mode"),
        Index("ix_inbox_events_status_id", "status", "id"),
        # Partial: a row enters it when it is handed to background work, not when the
        # webhook is answered, so the group commit writes no random page of it per
        # delivery. ``webhooks.repository.newest_of_org_connection`` finds both kinds.
        Index(
            "ix_inbox_events_org_connection_id",
            "org_connection_id",
            sqlite_where=text(HANDED_ON),
            postgresql_where=text(HANDED_ON),
        ),
    )
