"""SMART sources over HTTP.

- ``GET /.well-known/jwks.json`` (public, no PHI): the public key(s) that verify our
  ``private_key_jwt`` client assertions; an EHR registration points at this URL.
- ``GET /api/sources`` (API token): platforms and the institution catalog.
- ``POST /api/sources/authorize`` (API token): start a patient's authorization; answers the
  URL to send the patient's browser to.
- ``GET /sources/callback`` (public; the one-use ``state`` is the credential): the EHR's
  redirect; exchanges the code, stores the grant, starts the first sync.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse
from markupsafe import escape
from pydantic import BaseModel, Field

from ehi_bridge.api.schemas import Problem
from ehi_bridge.auth.dependencies import require_api_token
from ehi_bridge.deps import DatabaseDep, SettingsDep
from ehi_bridge.sources import service
from ehi_bridge.sources.definitions import definitions

router = APIRouter()  # public: the JWKS and the EHR's redirect
api_router = APIRouter(
    prefix="/api/sources", tags=["sources"], dependencies=[Depends(require_api_token)]
)
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Unknown platform or institution, or a bad URL"},
    401: {"model": Problem, "description": "Missing or invalid API token"},
}


class PlatformItem(BaseModel):
    id: str
    name: str
    token_auth: str
    everything: bool


class InstitutionItem(BaseModel):
    id: str
    name: str
    platform: str
    fhir_base_url: str


class SourcesList(BaseModel):
    platforms: list[PlatformItem]
    institutions: list[InstitutionItem]


class AuthorizeStarted(BaseModel):
    authorize_url: str


@router.get("/.well-known/jwks.json", include_in_schema=False)
async def jwks(db: DatabaseDep, settings: SettingsDep) -> JSONResponse:
    keys = await asyncio.to_thread(service.jwks, db, settings)
    return JSONResponse(keys, headers={"Cache-Control": "public, max-age=300"})


@api_router.get("", response_model=SourcesList, responses=RESPONSES)
def list_sources(settings: SettingsDep) -> SourcesList:
    """Platforms this service can connect to, and the institution catalog."""
    try:
        catalog = service.catalog(settings)
    except ValueError as exc:
        raise HTTPException(500, "the institution catalog cannot be read") from exc
    return SourcesList(
        platforms=[
            PlatformItem(id=p.id, name=p.name, token_auth=p.token_auth, everything=p.everything)
            for p in definitions().platforms
        ],
        institutions=[InstitutionItem(**i.model_dump()) for i in catalog],
    )


class AuthorizeBody(BaseModel):
    platform: str | None = Field(default=None, max_length=64)
    institution: str | None = Field(default=None, max_length=64)
    fhir_base_url: str | None = Field(default=None, max_length=1024)
    external_id: str | None = Field(default=None, max_length=255)
    connection_id: str | None = Field(default=None, max_length=64)


@api_router.post("/authorize", response_model=AuthorizeStarted, responses=RESPONSES)
def authorize(body: AuthorizeBody, db: DatabaseDep, settings: SettingsDep) -> AuthorizeStarted:
    """Start an authorization: the URL to send the patient to (valid 30 minutes)."""
    try:
        start = service.begin_authorization(
            db,
            settings,
            platform_id=body.platform,
            institution_id=body.institution,
            fhir_base_url=body.fhir_base_url,
            external_id=body.external_id,
            connection_id=body.connection_id,
        )
    except service.SourceConfigError as exc:
        raise HTTPException(400, str(exc)) from None
    return AuthorizeStarted(authorize_url=start.url)


def _page(title: str, message: str, status: int) -> HTMLResponse:
    html = (
        f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>"
        f"<h1>{escape(title)}</h1><p>{escape(message)}</p>"
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


@router.get("/sources/callback", include_in_schema=False)
def callback(
    db: DatabaseDep,
    settings: SettingsDep,
    state: Annotated[str, Query(min_length=1, max_length=128)],
    code: Annotated[str | None, Query(max_length=4096)] = None,
    error: Annotated[str | None, Query(max_length=64)] = None,
) -> HTMLResponse:
    if error or not code:
        return _page("Not connected", "The health system did not grant access.", 400)
    try:
        service.complete_authorization(db, settings, state, code)
    except service.AuthorizationFailed:
        return _page("Not connected", "This link has expired or was already used.", 400)
    return _page("Connected", "Your records are being retrieved. You can close this page.", 200)
