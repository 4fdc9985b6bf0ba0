"""Typed Fasten webhook envelopes and event data. Tolerant of extra and missing fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Envelope(Lenient):
    id: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=128)
    api_mode: str
    date: datetime | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class ConnectionSuccess(Lenient):
    org_connection_id: str | None = None
    endpoint_id: str | None = None
    brand_id: str | None = None
    portal_id: str | None = None
    connection_status: str | None = None
    platform_type: str | None = None
    request_id: str | None = None
    external_id: str | None = None
    external_state: str | None = None
    scope: str | None = None
    consent_expires_at: str | None = None
    tefca_directory_id: str | None = None


class DownloadLink(Lenient):
    url: str
    export_type: str | None = None
    content_type: str | None = None


class ExportStats(Lenient):
    total_resources: int | None = None
    total_by_resource_type: dict[str, int] | None = None


class ExportSuccess(Lenient):
    org_connection_id: str | None = None
    task_id: str | None = None
    org_id: str | None = None
    download_links: list[DownloadLink] = Field(default_factory=list)
    download_link: str | None = None
    stats: ExportStats = Field(default_factory=ExportStats)

    def jsonl_url(self) -> str | None:
        """The JSONL link (preferred), any link, or the legacy single ``download_link``."""
        for link in self.download_links:
            if (link.export_type or "jsonl") == "jsonl":
                return link.url
        if self.download_links:
            return self.download_links[0].url
        return self.download_link


class ExportFailed(Lenient):
    failure_reason: str = "suppressed_please_contact"
    org_connection_id: str | None = None
    task_id: str | None = None
    org_id: str | None = None


class AuthorizationRevoked(Lenient):
    org_connection_id: str | None = None
    endpoint_id: str | None = None
    portal_id: str | None = None
    brand_id: str | None = None
    platform_type: str | None = None
    connection_status: str | None = None


CONNECTION_SUCCESS = "patient.connection_success"
EXPORT_SUCCESS = "patient.ehi_export_success"
EXPORT_FAILED = "patient.ehi_export_failed"
AUTHORIZATION_REVOKED = "patient.authorization_revoked"
WEBHOOK_TEST = "webhook.test"

EVENT_MODELS: dict[str, type[Lenient]] = {
    CONNECTION_SUCCESS: ConnectionSuccess,
    EXPORT_SUCCESS: ExportSuccess,
    EXPORT_FAILED: ExportFailed,
    AUTHORIZATION_REVOKED: AuthorizationRevoked,
    WEBHOOK_TEST: Lenient,
}
KNOWN_TYPES = frozenset(EVENT_MODELS)
