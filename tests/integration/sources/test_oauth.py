"""SMART authorization and tokens against the sandbox over real HTTP, on both databases."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import select, text, update

from ehi_bridge.alerts.models import Alert
from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.sources import oauth, service
from ehi_bridge.sources.crypto import derived_signing_key
from ehi_bridge.sources.fetch import FailureReason, SyncError
from ehi_bridge.sources.models import SourceGrant
from tests.integration.sources.conftest import REDIRECT, Sandbox, authorize
from tests.smart_flow import consent


def _expire(db: Database, connection_id: str) -> None:
    with db.session() as session:
        session.execute(
            update(SourceGrant)
            .where(SourceGrant.connection_id == connection_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def _register_jwt_client(smart: Sandbox, db: Database, settings: Settings, client_id: str) -> None:
    smart.control(
        "POST",
        "/clients",
        json={
            "client_id": client_id,
            "profile": "*",
            "auth_method": "private_key_jwt",
            "jwks": service.jwks(db, settings),
            "redirect_uris": [REDIRECT],
        },
    )


@pytest.mark.parametrize("method", ["none", "client_secret_basic", "private_key_jwt"])
def test_each_client_auth_method_authorizes_and_refreshes(
    db: Database, settings: Settings, smart: Sandbox, method: str
) -> None:
    client_id = {"none": "ehi-public", "client_secret_basic": "ehi-confidential"}.get(method)
    if method == "private_key_jwt":
        client_id = "ehi-jwt"
        _register_jwt_client(smart, db, settings, client_id)
    connection_id = authorize(db, settings, client_id=client_id, token_auth=method)
    assert smart.token_requests("generic") == 1

    with db.read_session() as session:
        grant = session.get(SourceGrant, connection_id)
        assert grant is not None and grant.token_auth == method and grant.patient_id
        stored_access, stored_refresh = grant.access_token, grant.refresh_token
        connection = session.get(Connection, connection_id)
        assert connection is not None
        assert (connection.source, connection.status) == ("smart", "authorized")
    access, _ = service.valid_access_token(db, settings, connection_id)
    keys = service.source_keys(db, settings)
    # Encrypted at rest: neither token appears in the row.
    assert stored_access and access not in stored_access and stored_access.startswith("v1.")
    refresh = keys.cipher.decrypt(stored_refresh, f"refresh:{connection_id}")
    assert refresh and stored_refresh and refresh not in stored_refresh

    _expire(db, connection_id)
    renewed, _ = service.valid_access_token(db, settings, connection_id)
    assert renewed != access
    assert smart.token_requests("generic") == 2
    # The sandbox rotated the refresh token; the old one is dead, the stored one is new.
    with db.read_session() as session:
        grant = session.get(SourceGrant, connection_id)
        assert grant is not None
        new_refresh = keys.cipher.decrypt(grant.refresh_token, f"refresh:{connection_id}")
    assert new_refresh and new_refresh != refresh
    creds = service.credentials(
        settings, service.definitions().platform("sandbox-generic"), keys, client_id, method
    )
    with pytest.raises(oauth.OAuthFailure) as refused:
        oauth.refresh(creds, grant.token_endpoint, refresh)
    assert refused.value.error == "invalid_grant"


def test_wrong_secret_is_refused(db: Database, settings: Settings, smart: Sandbox) -> None:
    wrong = settings.model_copy(
        update={"source_client_secrets": {"sandbox-generic": SecretStr("nope")}}
    )
    start = service.begin_authorization(
        db,
        wrong,
        platform_id="sandbox-generic",
        client_id="ehi-confidential",
        token_auth="client_secret_basic",
    )
    answer = consent(start.url)
    with pytest.raises(service.AuthorizationFailed) as failed:
        service.complete_authorization(db, wrong, answer["state"], answer["code"])
    assert failed.value.reason == "invalid_client"


def test_forged_assertion_is_refused(db: Database, settings: Settings, smart: Sandbox) -> None:
    # The client is registered with another key than the one that signs our assertions.
    other = derived_signing_key("someone else").public_jwks()
    smart.control(
        "POST",
        "/clients",
        json={
            "client_id": "ehi-forged",
            "auth_method": "private_key_jwt",
            "jwks": other,
            "redirect_uris": [REDIRECT],
        },
    )
    start = service.begin_authorization(
        db,
        settings,
        platform_id="sandbox-generic",
        client_id="ehi-forged",
        token_auth="private_key_jwt",
    )
    answer = consent(start.url)
    with pytest.raises(service.AuthorizationFailed) as failed:
        service.complete_authorization(db, settings, answer["state"], answer["code"])
    assert failed.value.reason == "invalid_client"


def test_wrong_pkce_verifier_is_refused(db: Database, settings: Settings, smart: Sandbox) -> None:
    start = service.begin_authorization(db, settings, platform_id="sandbox-generic")
    answer = consent(start.url)
    platform = service.definitions().platform("sandbox-generic")
    creds = service.credentials(settings, platform, service.source_keys(db, settings))
    token_url = f"{smart.url}/generic/oauth/token"
    with pytest.raises(oauth.OAuthFailure) as failed:
        oauth.exchange_code(creds, token_url, answer["code"], REDIRECT, oauth.new_code_verifier())
    assert failed.value.error == "invalid_grant"
    # A state is good once: replaying the redirect is refused before any token request.
    with pytest.raises(service.AuthorizationFailed):
        service.complete_authorization(db, settings, "not-a-state", answer["code"])


def test_fifty_concurrent_calls_with_an_expired_token_make_one_token_request(
    db: Database, settings: Settings, smart: Sandbox
) -> None:
    connection_id = authorize(db, settings)
    _expire(db, connection_id)
    smart.control("POST", "/stats/reset")

    async def fifty() -> set[str]:
        # Separate providers, as 50 separate syncs would have: only the lock can dedupe.
        providers = [service.GrantTokens(db, settings, connection_id) for _ in range(50)]
        return set(await asyncio.gather(*(p.token() for p in providers)))

    tokens = asyncio.run(fifty())
    assert len(tokens) == 1
    assert smart.token_requests("generic") == 1


def test_invalid_grant_requires_reauthorization_with_an_alert(
    db: Database, settings: Settings, smart: Sandbox
) -> None:
    connection_id = authorize(db, settings)
    smart.fault("invalid_grant", profile="generic")
    _expire(db, connection_id)
    with pytest.raises(SyncError) as failed:
        service.valid_access_token(db, settings, connection_id)
    assert failed.value.reason == FailureReason.REAUTH_REQUIRED
    with db.read_session() as session:
        connection = session.get(Connection, connection_id)
        assert connection is not None and connection.status == "reauth_required"
        grant = session.get(SourceGrant, connection_id)
        assert grant is not None and grant.refresh_token is None
        kinds = session.scalars(select(Alert.kind)).all()
    assert service.SOURCE_REAUTH_REQUIRED in kinds
    # Authorizing again brings the same connection back.
    again = authorize(db, settings, connection_id=connection_id)
    assert again == connection_id
    with db.read_session() as session:
        connection = session.get(Connection, connection_id)
        assert connection is not None and connection.status == "authorized"


def test_tokens_never_stored_in_plaintext(db: Database, settings: Settings, smart: Sandbox) -> None:
    connection_id = authorize(db, settings)
    access, _ = service.valid_access_token(db, settings, connection_id)
    with db.read_session() as session:
        dumped = " ".join(
            str(v)
            for row in session.execute(text("SELECT * FROM source_grants")).all()
            for v in row
        )
    assert access not in dumped
