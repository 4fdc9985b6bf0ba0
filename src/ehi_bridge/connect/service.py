"""The connect page's view of a patient: which link is valid, which widget to show, and
the institutions they can connect directly (SMART, ``sources/``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from ehi_bridge.auth.connect_links import read_connect_token
from ehi_bridge.config import Settings
from ehi_bridge.dashboard import repository as repo
from ehi_bridge.db.engine import Database
from ehi_bridge.sources import service as sources
from ehi_bridge.sources.definitions import Institution

MAX_INSTITUTIONS = 20


class DirectUnavailable(ValueError):
    """The institution is unknown or cannot be reached for an authorization."""


@dataclass(frozen=True, slots=True)
class Widget:
    stitch_js_url: str
    public_id: str
    api_mode: str
    external_id: str


def external_id_of(settings: Settings, token: str | None) -> str | None:
    """The ``external_id`` named by a valid, unexpired link token; None otherwise."""
    if not token:
        return None
    return read_connect_token(settings, token)


def widget_for(settings: Settings, external_id: str) -> Widget:
    public_id, _ = settings.credentials(settings.connect_mode)
    return Widget(
        stitch_js_url=settings.stitch_js_url,
        public_id=public_id,
        api_mode=settings.connect_mode,
        external_id=external_id,
    )


def status_of(session: Session, external_id: str) -> list[repo.PatientConnectionStatus]:
    """This patient's connections: platform, status and latest export status only."""
    return repo.connections_of_external_id(session, external_id)


def search_institutions(settings: Settings, query: str) -> list[Institution]:
    """Catalog institutions whose name or id contains ``query`` (case-insensitive)."""
    needle = query.strip().casefold()
    found = [
        i
        for i in sources.catalog(settings)
        if not needle or needle in i.name.casefold() or needle in i.id.casefold()
    ]
    return sorted(found, key=lambda i: i.name.casefold())[:MAX_INSTITUTIONS]


def begin_direct(db: Database, settings: Settings, external_id: str, institution_id: str) -> str:
    """The EHR's authorize URL for this patient (``external_id`` from their signed link)."""
    try:
        start = sources.begin_authorization(
            db, settings, institution_id=institution_id, external_id=external_id
        )
    except sources.SourceConfigError as exc:
        raise DirectUnavailable(str(exc)) from exc
    return start.url
