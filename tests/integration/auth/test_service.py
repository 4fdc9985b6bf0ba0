from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select

from ehi_bridge.auth import service
from ehi_bridge.auth.models import ApiToken, AuditLog, DashboardUser
from ehi_bridge.auth.service import AuthError
from ehi_bridge.db.engine import Database


def test_token_is_stored_as_hash_only(db: Database) -> None:
    with db.session() as session:
        token, plaintext = service.create_api_token(session, "ci")
        token_id = token.id
    assert plaintext.startswith("ehib_") and len(plaintext) > 40
    with db.read_session() as session:
        row = session.get(ApiToken, token_id)
        assert row is not None
        assert row.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
        assert plaintext not in repr(row.__dict__)


def test_authenticate(db: Database) -> None:
    with db.session() as session:
        _, plaintext = service.create_api_token(session, "ci")
        _, other = service.create_api_token(session, "other")
    with db.session() as session:
        token = service.authenticate_token(session, plaintext)
        assert token is not None and token.name == "ci"
        assert service.authenticate_token(session, plaintext + "x") is None
        assert service.authenticate_token(session, "") is None
        assert service.authenticate_token(session, "y" * 10_000) is None
        token_other = service.authenticate_token(session, other)
        assert token_other is not None and token_other.name == "other"


def test_last_used_is_written_at_most_once_a_minute(db: Database) -> None:
    with db.session() as session:
        token, plaintext = service.create_api_token(session, "ci")
        token_id = token.id
    with db.session() as session:
        first = service.authenticate_token(session, plaintext)
        assert first is not None and first.last_used_at is not None
        stamp = first.last_used_at
    with db.session() as session:
        again = service.authenticate_token(session, plaintext)
        assert again is not None and again.last_used_at == stamp
    # An hour later (set the stored stamp back instead of waiting) it is written again.
    with db.session() as session:
        row = session.get(ApiToken, token_id)
        assert row is not None
        row.last_used_at = stamp - timedelta(hours=1)
    with db.session() as session:
        later = service.authenticate_token(session, plaintext)
        assert later is not None and later.last_used_at is not None
        assert later.last_used_at > stamp - timedelta(hours=1)


def test_revoke(db: Database) -> None:
    with db.session() as session:
        token, plaintext = service.create_api_token(session, "ci")
        token_id = token.id
    with db.session() as session:
        service.revoke_api_token(session, token_id)
    with db.session() as session:
        assert service.authenticate_token(session, plaintext) is None
        assert [t.revoked_at is not None for t in service.list_api_tokens(session)] == [True]
        with pytest.raises(AuthError):
            service.revoke_api_token(session, 999)


def test_token_names_are_checked(db: Database) -> None:
    with db.session() as session:
        for name in ("", "   ", "x" * 129):
            with pytest.raises(AuthError):
                service.create_api_token(session, name)


def test_users(db: Database) -> None:
    with db.session() as session:
        user = service.create_user(session, "alice", "correct horse battery")
        assert user.password_hash.startswith("$argon2id$")
        with pytest.raises(AuthError):
            service.create_user(session, "alice", "another password")
        with pytest.raises(AuthError):
            service.create_user(session, "bob", "short")
        with pytest.raises(AuthError):
            service.create_user(session, "with space", "long enough password")
    with db.session() as session:
        found = service.verify_user(session, "alice", "correct horse battery")
        assert found is not None and found.username == "alice"
        assert service.verify_user(session, "alice", "wrong password") is None
        assert service.verify_user(session, "nobody", "correct horse battery") is None
        assert service.verify_user(session, "alice", "") is None
    with db.session() as session:
        service.disable_user(session, "alice")
        with pytest.raises(AuthError):
            service.disable_user(session, "nobody")
    with db.session() as session:
        assert service.verify_user(session, "alice", "correct horse battery") is None
        stored = session.scalars(select(DashboardUser)).one()
        assert stored.disabled and stored.disabled_at is not None


def test_audit_rows(db: Database) -> None:
    with db.session() as session:
        service.record_audit(
            session, "token:ci", "resource.read", "resource", "c/P/1", "/api/x?q=1"
        )
        service.record_audit(session, "user:alice", "event.read", "event", "7", "/dash/events/7")
        service.record_audit(session, "cron", "purge", "connection", None, "/")
    with db.read_session() as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        assert [(r.actor_kind, r.actor_name, r.action, r.target_id, r.path) for r in rows] == [
            ("token", "ci", "resource.read", "c/P/1", "/api/x"),
            ("user", "alice", "event.read", "7", "/dash/events/7"),
            ("system", "cron", "purge", None, "/"),
        ]
        assert all(r.at is not None and r.at.tzinfo is not None for r in rows)
