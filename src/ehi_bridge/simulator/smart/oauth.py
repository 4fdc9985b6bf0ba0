"""The sandbox's OAuth checks, pure: PKCE S256, client authentication (Basic secrets, RFC 7523
JWT assertions verified with joserfc), redirect URIs and SMART scopes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
AUTH_METHODS = ("none", "client_secret_basic", "private_key_jwt")
_VERIFIER_RE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_SCOPE_RE = re.compile(r"^(patient|user|system)/(\*|[A-Za-z]+)\.(\*|read|write|[cruds]+)$")


class OAuthError(Exception):
    """An OAuth error answer: ``error`` code, HTTP status, and a description for the client."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of ``verifier`` (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify_pkce(verifier: str | None, challenge: str) -> bool:
    if not verifier or not _VERIFIER_RE.match(verifier):
        return False
    return hmac.compare_digest(pkce_challenge(verifier), challenge)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``Authorization: Basic`` → (client_id, secret), form-urldecoded as RFC 6749 2.3.1 says."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    return unquote(client_id), unquote(secret)


def secret_matches(given: str, expected: str | None) -> bool:
    if expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True, slots=True)
class AssertionClaims:
    jti: str
    exp: int


def verify_client_assertion(
    assertion: str,
    jwks: Mapping[str, Any],
    *,
    client_id: str,
    audience: str,
    now: float,
    max_lifetime: float = 300.0,
    leeway: float = 30.0,
) -> AssertionClaims:
    """Check an RFC 7523 client assertion; raise :class:`OAuthError` (invalid_client, 401).

    Signature by a key of ``jwks`` with RS384 or ES384; ``iss`` = ``sub`` = client_id;
    ``aud`` = the token endpoint URL; ``exp`` in the future and at most ``max_lifetime``
    away; a ``jti``. Replay of the ``jti`` is the caller's check (it needs state).
    """

    def fail(why: str) -> OAuthError:
        return OAuthError("invalid_client", f"client assertion rejected: {why}", 401)

    try:
        keys = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise fail("the client's JWKS holds no usable key") from exc
    try:
        token = jwt.decode(assertion, keys, algorithms=list(ASSERTION_ALGORITHMS))
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise fail("bad signature, algorithm or format") from exc
    claims = token.claims
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise fail("iss and sub must be the client_id")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        raise fail("aud must be the token endpoint URL")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise fail("exp is required")
    if exp + leeway < now:
        raise fail("expired")
    if exp - now > max_lifetime + leeway:
        raise fail("exp is too far in the future")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf - leeway > now:
        raise fail("not valid yet")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise fail("jti is required")
    return AssertionClaims(jti=jti, exp=int(exp))


def is_loopback_redirect(uri: str) -> bool:
    """An ``http(s)`` URI on 127.0.0.0/8, ::1 or localhost, any port (RFC 8252 7.3)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def redirect_allowed(registered: Iterable[str], uri: str) -> bool:
    """Exact match against the registered URIs; none registered: any loopback URI."""
    listed = list(registered)
    if not listed:
        return is_loopback_redirect(uri)
    return uri in listed


def parse_scopes(scope: str | None) -> list[str]:
    seen: dict[str, None] = {}
    for item in (scope or "").split():
        seen.setdefault(item, None)
    return list(seen)


def scope_allows(scopes: Iterable[str], rtype: str, interaction: str = "read") -> bool:
    """Whether SMART v1 (``.read``) or v2 (``.rs``) patient/user scopes allow reading (``r``)
    or searching (``s``) ``rtype``. Binary is also readable under DocumentReference scopes."""
    letter = "s" if interaction == "search" else "r"
    wanted = {rtype, "*"} | ({"DocumentReference"} if rtype == "Binary" else set())
    for scope in scopes:
        match = _SCOPE_RE.match(scope)
        if match is None or match.group(1) == "system" or match.group(2) not in wanted:
            continue
        perm = match.group(3)
        if perm in ("*", "read") or (perm != "write" and letter in perm):
            return True
    return False
