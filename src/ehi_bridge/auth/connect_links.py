"""Signed, expiring links for the connect page: they name the patient (``external_id``)
and let that page report ``widget.complete`` without an API token."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer

from ehi_bridge.config import Settings

_SALT = "ehi-bridge.connect-link"


class ConnectLinkError(Exception):
    """No ``connect_link_secret`` configured."""


def _serializer(settings: Settings) -> URLSafeSerializer | None:
    secrets = settings.connect_link_secrets()
    if not secrets:
        return None
    # itsdangerous signs with the last key and verifies with all: ours lists the signer first.
    return URLSafeSerializer(list(reversed(secrets)), salt=_SALT)


def make_connect_token(
    settings: Settings, external_id: str, ttl: int, *, now: float | None = None
) -> str:
    """A token valid for ``ttl`` seconds that names ``external_id``."""
    serializer = _serializer(settings)
    if serializer is None:
        raise ConnectLinkError("EHI_CONNECT_LINK_SECRET is not set")
    issued = int(time.time() if now is None else now)
    return str(serializer.dumps({"x": external_id, "e": issued + int(ttl)}))


def read_connect_token(settings: Settings, token: str, *, now: float | None = None) -> str | None:
    """The ``external_id`` of a valid, unexpired token; None otherwise."""
    serializer = _serializer(settings)
    if serializer is None or not token or len(token) > 2048:
        return None
    try:
        payload = serializer.loads(token)
    except BadSignature:
        return None
    if not isinstance(payload, dict):
        return None
    external_id, expires = payload.get("x"), payload.get("e")
    if not isinstance(external_id, str) or not isinstance(expires, int):
        return None
    current = time.time() if now is None else now
    if current >= expires:
        return None
    return external_id


def make_connect_link(settings: Settings, external_id: str, ttl: int) -> str:
    """The connect page's URL (under ``public_base_url``) carrying a token for ``external_id``."""
    token = make_connect_token(settings, external_id, ttl)
    return f"{settings.public_base_url.rstrip('/')}/connect?{urlencode({'token': token})}"
