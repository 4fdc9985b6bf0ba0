"""A patient's link to one health-system portal, as Fasten reports it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from ehi_bridge.db.base import Base, UTCDateTime


class Connection(Base):
    __tablename__ = "connections"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # a UUIDv7 in hex (db/ids.py)
    org_connection_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(255), index=True)
    api_mode: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(16), default="fasten")  # fasten | manual | smart
    status: Mapped[str] = mapped_column(String(16))  # indexed with created_at, below
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    platform_type: Mapped[str | None] = mapped_column(String(64), index=True)
    # A ``smart`` connection's FHIR base (its platform is ``platform_type``).
    fhir_base_url: Mapped[str | None] = mapped_column(String(1024))
    endpoint_id: Mapped[str | None] = mapped_column(String(255))
    brand_id: Mapped[str | None] = mapped_column(String(255))
    portal_id: Mapped[str | None] = mapped_column(String(255))
    org_id: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(255))
    external_state: Mapped[str | None] = mapped_column(String(255))
    scope: Mapped[str | None] = mapped_column(String(1024))
    consent_expires_at: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    authorized_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_connections_status_created", "status", "created_at"),)
