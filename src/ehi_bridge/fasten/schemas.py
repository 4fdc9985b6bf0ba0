"""What the Fasten Connect API answers, read tolerantly: unknown fields are kept, not fatal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ExportTask(_Tolerant):
    """An EHI export task: ``status`` is ``pending``, ``success`` or ``failed``."""

    task_id: str
    status: str = "pending"
    org_connection_id: str | None = None
    failure_reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _id_alias(cls, value: Any) -> Any:
        # Accept ``id`` where ``task_id`` is expected (older or differently shaped answers).
        if isinstance(value, dict) and "task_id" not in value and "id" in value:
            return {**value, "task_id": value["id"]}
        return value


class OrgConnection(_Tolerant):
    """One patient's authorization to one portal (``status``: authorized/revoked/refreshing)."""

    org_connection_id: str
    org_id: str | None = None
    brand_id: str | None = None
    portal_id: str | None = None
    endpoint_id: str | None = None
    platform_type: str | None = None
    api_mode: str | None = None
    status: str | None = None
    scope: str | None = None
    consent_expires_at: str | None = None
    external_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = dict(value)
        if "org_connection_id" not in out and "id" in out:
            out["org_connection_id"] = out["id"]
        if "status" not in out and "connection_status" in out:
            out["status"] = out["connection_status"]
        if isinstance(out.get("scope"), list):
            out["scope"] = " ".join(str(s) for s in out["scope"])
        return out


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """A downloaded export file: its size in bytes and where it now lies."""

    bytes: int
    path: Path
    restarts: int = 0  # transfers begun again from byte 0 (server ignored Range)
    resumes: int = 0  # transfers continued with a Range request after a break
