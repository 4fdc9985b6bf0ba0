"""API shapes of ingest runs and the quarantine."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class IngestRunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    connection_id: str
    export_id: int | None
    source: str = Field(description="export, import or reingest")
    status: str = Field(
        description="running, complete, conflicts (repeats with different content) or partial"
    )
    started_at: datetime
    finished_at: datetime | None
    report: dict[str, Any] | None = Field(
        description="Counts, conflicting repeats, the Bundle's own facts"
    )


class IngestRunPage(BaseModel):
    items: list[IngestRunOut]


class QuarantineItem(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int | None
    export_id: int | None
    kind: str = Field(description="rejected, conflict, exact_repeat or duplicate_keys")
    line_number: int = Field(description="Line in the file (a Bundle: position in entry)")
    reason: str
    resource_type: str | None
    resource_id: str | None
    previous_line: int | None = Field(description="A repeat: line of the version it repeats")
    raw_size: int | None = Field(description="Size of the rejected line in bytes")
    truncated: bool = Field(description="Only the first bytes of the line were kept")
    raw_base64: str | None = Field(description="The kept bytes of a rejected line, base64")
    reingested_at: datetime | None
    created_at: datetime


class QuarantinePage(BaseModel):
    items: list[QuarantineItem]
    next_cursor: str | None
