"""Standard Webhooks signing and verification over the raw body bytes. Pure: no I/O.

Spec: signed content is ``{webhook-id}.{webhook-timestamp}.{body}``, HMAC-SHA256 with the
base64-decoded secret (after an optional ``whsec_`` prefix); the ``webhook-signature`` header
is a space-separated list of ``v1,<base64>``; timestamps within ±tolerance of now.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300
MAX_MSG_ID_LENGTH = 255
MAX_TIMESTAMP_DIGITS = 20  # int() of a longer string costs time, or raises past 4300 digits


class SignatureError(Exception):
    """The delivery is not authentic. ``reason`` is safe to log (no secret, no body)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MissingHeaderError(SignatureError):
    """A required Standard Webhooks header is absent or unreadable (answered 400)."""


class InvalidSecretError(ValueError):
    pass


def decode_secret(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    if not raw:
        raise InvalidSecretError("webhook secret is empty")
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSecretError("webhook secret is not valid base64") from exc
    if not key:
        raise InvalidSecretError("webhook secret is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return one ``v1,<base64>`` signature for the given message."""
    mac = hmac.new(key, b"%s.%d." % (msg_id.encode(), timestamp) + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class VerifiedHeaders:
    msg_id: str
    timestamp: int


class Verifier:
    """Verifies deliveries against one or more secrets (several during rotation)."""

    def __init__(
        self, secrets: Iterable[str], tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    ) -> None:
        self._keys = [decode_secret(s) for s in secrets]
        if not self._keys:
            raise InvalidSecretError("at least one webhook secret is required")
        self._tolerance = tolerance_seconds

    def verify(
        self, headers: Mapping[str, str], body: bytes, now: float | None = None
    ) -> VerifiedHeaders:
        """Check headers (lower-case names) and body; raise :class:`SignatureError` if bad."""
        msg_id = headers.get("webhook-id")
        timestamp_text = headers.get("webhook-timestamp")
        signature_header = headers.get("webhook-signature")
        if not msg_id or not timestamp_text or not signature_header:
            raise MissingHeaderError("missing webhook-id, webhook-timestamp or webhook-signature")
        if len(msg_id) > MAX_MSG_ID_LENGTH or not msg_id.isprintable():
            raise MissingHeaderError("webhook-id is not a valid id")
        if (
            len(timestamp_text) > MAX_TIMESTAMP_DIGITS
            or not timestamp_text.isascii()
            or not timestamp_text.isdigit()
        ):
            raise MissingHeaderError("webhook-timestamp is not a number")
        timestamp = int(timestamp_text)
        current = time.time() if now is None else now
        if timestamp < current - self._tolerance:
            raise SignatureError("timestamp too old")
        if timestamp > current + self._tolerance:
            raise SignatureError("timestamp too far in the future")

        candidates = []
        for part in signature_header.split(" "):
            version, sep, value = part.partition(",")
            if sep and version == "v1" and value:
                candidates.append(value.encode("ascii", "replace"))
        if candidates:
            for key in self._keys:
                expected = sign(key, msg_id, timestamp, body)[3:].encode("ascii")
                for candidate in candidates:
                    if hmac.compare_digest(expected, candidate):
                        return VerifiedHeaders(msg_id=msg_id, timestamp=timestamp)
        raise SignatureError("no matching signature")
