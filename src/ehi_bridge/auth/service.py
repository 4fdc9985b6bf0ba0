"""API tokens, dashboard users and the audit log.

Tokens are random strings shown once; only their SHA-256 is stored, so a lookup by hash is
the comparison (the database never sees the plaintext, and there is no byte-by-byte compare
of secrets in Python). Passwords are argon2id hashes (argon2-cffi).

Audit rows carry ids and request paths only, never record contents or query strings.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ehi_bridge.auth.models import (
    ApiToken,
    AuditLog,
    DashboardUser,
    InstanceSecret,
    LoginSession,
)
from ehi_bridge.db.base import utcnow

ISSUED_PREFIX = "ehib_"  # marks our API tokens in logs/scanners
LAST_USED_RESOLUTION = timedelta(minutes=1)
ACTOR_KINDS = ("token", "user", "system", "connect")

_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps the timing of both paths alike.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AuthError(Exception):
    """A request on users or tokens that cannot be honoured (duplicate, unknown, invalid)."""


@dataclass(frozen=True)
class Actor:
    """Who is making a request: ``token:<name>``, ``user:<username>``, ``connect:<ext id>``."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def hash_token(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


# --- secrets this installation generates for itself --------------------------------------


def instance_secret(session: Session, name: str) -> str:
    """The stored secret ``name``, generated on first use. Every process and host on the
    database gets the same one: concurrent first uses race on the primary key, and the loser
    reads the winner's."""
    stored = session.get(InstanceSecret, name)
    if stored is not None:
        return stored.value
    try:
        with session.begin_nested():
            session.add(
                InstanceSecret(name=name, value=secrets.token_urlsafe(48), created_at=utcnow())
            )
    except IntegrityError:
        pass
    value = session.scalars(select(InstanceSecret.value).where(InstanceSecret.name == name)).one()
    return value


# --- API tokens ---------------------------------------------------------------------------


def create_api_token(session: Session, name: str) -> tuple[ApiToken, str]:
    """A new token named ``name``; the plaintext is returned once and never stored.

    Names identify tokens in lists and audit rows, so two unrevoked tokens never share one."""
    name = name.strip()
    if not name or len(name) > 128:
        raise AuthError("token name must be 1-128 characters")
    taken = session.scalars(
        select(ApiToken.id).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
    ).first()
    if taken is not None:
        raise AuthError(f"a token named {name!r} already exists (id {taken}); revoke it first")
    plaintext = ISSUED_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, token_hash=hash_token(plaintext), created_at=utcnow())
    session.add(token)
    session.flush()
    return token, plaintext


def find_token(session: Session, plaintext: str) -> ApiToken | None:
    """The live token matching ``plaintext`` (no writes; usable in a read-only session)."""
    if not plaintext or len(plaintext) > 512:
        return None
    digest = hash_token(plaintext)
    token = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).one_or_none()
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        return None
    if token.revoked_at is not None:
        return None
    return token


def needs_touch(token: ApiToken, now: datetime | None = None) -> bool:
    now = now or utcnow()
    return token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION


def mark_token_used(session: Session, token_id: int, now: datetime | None = None) -> None:
    """Set ``last_used_at`` unless it was set less than a minute ago."""
    now = now or utcnow()
    token = session.get(ApiToken, token_id)
    if token is not None and needs_touch(token, now):
        token.last_used_at = now


def authenticate_token(session: Session, plaintext: str) -> ApiToken | None:
    """The live token for ``plaintext`` or None; records its use at most once a minute."""
    token = find_token(session, plaintext)
    if token is not None and needs_touch(token):
        token.last_used_at = utcnow()
    return token


def list_api_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_api_token(session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise AuthError(f"no token with id {token_id}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token


# --- dashboard users ------------------------------------------------------------------------


def _clean_username(username: str) -> str:
    username = username.strip()
    if not username or len(username) > 128 or any(c.isspace() for c in username):
        raise AuthError("username must be 1-128 characters without spaces")
    return username


def check_new_username(session: Session, username: str) -> str:
    """The cleaned ``username`` if a user may be created with it; ``AuthError`` otherwise
    (the CLI asks this before prompting for a password)."""
    username = _clean_username(username)
    exists = session.scalars(
        select(DashboardUser.id).where(DashboardUser.username == username)
    ).first()
    if exists is not None:
        raise AuthError(f"user {username!r} already exists")
    return username


def create_user(session: Session, username: str, password: str) -> DashboardUser:
    username = check_new_username(session, username)
    if len(password) < 8:
        raise AuthError("password must be at least 8 characters")
    user = DashboardUser(
        username=username, password_hash=_hasher.hash(password), created_at=utcnow()
    )
    session.add(user)
    session.flush()
    return user


def verify_user(session: Session, username: str, password: str) -> DashboardUser | None:
    """The enabled user with this username and password, or None.

    Upgrades the stored hash in place when argon2's parameters changed (the caller commits).
    """
    user = session.scalars(
        select(DashboardUser).where(DashboardUser.username == username.strip())
    ).one_or_none()
    if user is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, password)
        return None
    try:
        _hasher.verify(user.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def disable_user(session: Session, username: str) -> DashboardUser:
    user = session.scalars(
        select(DashboardUser).where(DashboardUser.username == username.strip())
    ).one_or_none()
    if user is None:
        raise AuthError(f"no user {username!r}")
    if not user.disabled:
        user.disabled = True
        user.disabled_at = utcnow()
    now = utcnow()
    for login in session.scalars(
        select(LoginSession).where(
            LoginSession.username == user.username, LoginSession.revoked_at.is_(None)
        )
    ):
        login.revoked_at = now
    return user


# --- dashboard sessions ---------------------------------------------------------------------


def start_login_session(session: Session, session_id: str, username: str) -> None:
    session.add(LoginSession(id=session_id, username=username, created_at=utcnow()))
    session.flush()


def login_session_active(session: Session, session_id: str, username: str) -> bool:
    """The session exists, is not revoked, and its user exists and is enabled."""
    row = session.execute(
        select(LoginSession.revoked_at, DashboardUser.disabled)
        .join(DashboardUser, DashboardUser.username == LoginSession.username)
        .where(LoginSession.id == session_id, LoginSession.username == username)
    ).one_or_none()
    return row is not None and row.revoked_at is None and not row.disabled


def revoke_login_session(session: Session, session_id: str) -> None:
    row = session.get(LoginSession, session_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()


# --- audit log ------------------------------------------------------------------------------


def _split_actor(actor: str) -> tuple[str, str]:
    kind, sep, name = actor.partition(":")
    if sep and kind in ACTOR_KINDS:
        return kind, name[:128]
    return "system", actor[:128]


def record_audit(
    session: Session,
    actor: str,
    action: str,
    target_type: str,
    target_id: str | None,
    path: str,
) -> AuditLog:
    """Add one audit row. ``actor`` is ``"token:<name>"``, ``"user:<name>"`` or free text
    (kind ``system``). ``path`` is the request path without its query string."""
    kind, name = _split_actor(actor)
    row = AuditLog(
        actor_kind=kind,
        actor_name=name,
        action=action[:64],
        target_type=target_type[:64],
        target_id=None if target_id is None else target_id[:255],
        at=utcnow(),
        path=path.split("?", 1)[0][:512],
    )
    session.add(row)
    return row
