"""Request and response bodies of the REST API (they make up the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

# Identifiers and filter values: bounded, printable (PostgreSQL rejects NUL in text).
Ident = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")]


class ORMModel(BaseModel):
    model_config = ConfigDict(from_attributes=True, validate_by_name=True, validate_by_alias=True)


class ConnectionOut(ORMModel):
    id: str
    org_connection_id: str | None
    external_id: str | None
    api_mode: str
    source: str
    status: str
    status_changed_at: datetime | None
    platform_type: str | None
    fhir_base_url: str | None = None
    endpoint_id: str | None
    brand_id: str | None
    portal_id: str | None
    org_id: str | None
    scope: str | None
    consent_expires_at: str | None
    created_at: datetime
    updated_at: datetime
    authorized_at: datetime | None
    revoked_at: datetime | None


class ConnectionPage(BaseModel):
    items: list[ConnectionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class EventOut(ORMModel):
    """An inbox event without its body."""

    id: int
    event_id: str
    webhook_id: str
    type: str = Field(validation_alias="event_type")
    api_mode: str
    status: str
    org_connection_id: str | None
    received_at: datetime
    last_received_at: datetime
    delivery_count: int
    attempts: int
    replays: int
    applied_at: datetime | None


class EventDetail(EventOut):
    last_error: str | None
    envelope: dict[str, Any] | None = Field(
        description="The stored webhook envelope (JSON); null if the body is not a JSON object"
    )


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class TimelineEvent(ORMModel):
    id: int
    type: str = Field(validation_alias="event_type")
    status: str
    received_at: datetime
    delivery_count: int


class ExportOut(ORMModel):
    id: int
    connection_id: str
    source: str = Field(description="`fasten` (Fasten's export file) or `smart` (a SMART sync)")
    task_id: str | None
    status: str
    failure_reason: str | None
    trigger: str
    requested_at: datetime | None
    deadline_at: datetime | None
    succeeded_at: datetime | None
    file_expires_at: datetime | None
    completed_at: datetime | None
    stats_total: int | None
    ingested_total: int | None
    bytes_downloaded: int
    attempts: int
    created_at: datetime
    updated_at: datetime


class ExportDetail(ExportOut):
    stats_by_type: dict[str, Any] | None
    ingested_by_type: dict[str, Any] | None
    report: dict[str, Any] | None
    last_error: str | None


class ExportPage(BaseModel):
    items: list[ExportOut]
    next_cursor: str | None


class ConnectionDetail(BaseModel):
    connection: ConnectionOut
    events: list[TimelineEvent] = Field(description="Newest first, at most 500")
    exports: list[ExportOut] = Field(description="Newest first")
    resource_counts: dict[str, int]


class UserDetail(BaseModel):
    external_id: str
    connections: list[ConnectionOut]
    exports: list[ExportOut]
    resource_counts: dict[str, int] = Field(description="By resource type, all connections")


class ResourceOut(BaseModel):
    id: int = Field(description="Row id (the list's sort key)")
    connection_id: str
    resource_type: str
    resource_id: str
    version: int
    last_updated: str | None
    ingested_at: datetime
    revoked: bool
    resource: dict[str, Any] | None = Field(description="The stored FHIR resource")


class ResourcePage(BaseModel):
    items: list[ResourceOut]
    next_cursor: str | None


class ExportRequest(BaseModel):
    connection_id: Ident = Field(description="Our connection id or Fasten's org_connection_id")


class ReplayRequest(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(
        default=None, max_length=1000
    )
    status: Literal["parked"] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ReplayRequest:
        if (self.ids is None) == (self.status is None):
            raise ValueError("give exactly one of `ids` or `status`")
        return self


class ReplayResult(BaseModel):
    requested: int
    replayed: int


class WidgetComplete(BaseModel):
    """``widget.complete`` data from the Fasten Stitch element."""

    model_config = ConfigDict(extra="ignore")

    org_connection_id: Ident
    endpoint_id: Ident | None = None
    brand_id: Ident | None = None
    portal_id: Ident | None = None
    platform_type: Ident | None = None
    external_id: Ident | None = None
    api_mode: Literal["test", "live"] | None = Field(
        default=None, description="The event's api_mode; default: the setting `connect_mode`"
    )
    connect_token: str | None = Field(
        default=None, max_length=2048, description="Signed connect-link token, if no header"
    )

    @field_validator(
        "endpoint_id", "brand_id", "portal_id", "platform_type", "external_id", mode="before"
    )
    @classmethod
    def _empty_is_missing(cls, value: object) -> object:
        return None if value == "" else value


class Problem(BaseModel):
    detail: str


class ConnectLinkRequest(BaseModel):
    external_id: Ident = Field(description="Your user id for the patient who will connect")
    ttl_hours: int = Field(default=24, ge=1, le=168, description="Hours the link stays valid")


class ConnectLinkOut(BaseModel):
    external_id: str
    url: str = Field(description="The connect page with a signed token; send it to the patient")
    expires_at: datetime
