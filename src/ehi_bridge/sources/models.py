"""A SMART connection's grant (encrypted tokens, rotated durably) and pending authorizations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ehi_bridge.db.base import Base, UTCDateTime


class SourceGrant(Base):
    """The tokens of one ``smart`` connection. Token columns hold AES-GCM ciphertext
    (``sources/crypto.py``), never plaintext. ``generation`` counts refreshes: a refresh
    happens under this row's lock, and its answer is committed before the new access token
    is used, so a rotated refresh token is never lost."""

    __tablename__ = "source_grants"

    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id"), primary_key=True)
    platform: Mapped[str] = mapped_column(String(64))
    fhir_base_url: Mapped[str] = mapped_column(String(1024))
    token_endpoint: Mapped[str] = mapped_column(String(1024))
    client_id: Mapped[str] = mapped_column(String(255))
    token_auth: Mapped[str] = mapped_column(String(32))
    patient_id: Mapped[str | None] = mapped_column(String(255))
    scope: Mapped[str | None] = mapped_column(Text)
    access_token: Mapped[str | None] = mapped_column(Text)
    refresh_token: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SourceAuthorization(Base):
    """One authorization in progress: the ``state`` we sent and the PKCE verifier
    (encrypted), kept until the EHR redirects back."""

    __tablename__ = "source_authorizations"

    state: Mapped[str] = mapped_column(String(128), primary_key=True)
    platform: Mapped[str] = mapped_column(String(64))
    fhir_base_url: Mapped[str] = mapped_column(String(1024))
    authorize_endpoint: Mapped[str] = mapped_column(String(1024))
    token_endpoint: Mapped[str] = mapped_column(String(1024))
    redirect_uri: Mapped[str] = mapped_column(String(1024))
    client_id: Mapped[str] = mapped_column(String(255))
    token_auth: Mapped[str] = mapped_column(String(32))
    code_verifier: Mapped[str] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(255))
    connection_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
