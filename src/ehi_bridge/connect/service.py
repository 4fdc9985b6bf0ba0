"""The connect page's view of a patient: which link is valid, which widget to show."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from ehi_bridge.auth.connect_links import read_connect_token
from ehi_bridge.config import Settings
from ehi_bridge.dashboard import repository as repo


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
