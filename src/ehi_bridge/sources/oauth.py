"""SMART App Launch with authlib: discovery, the authorize URL (PKCE S256, ``aud``), the code
exchange and the refresh, with ``none``, ``client_secret_basic`` or ``private_key_jwt``
(RFC 7523) client authentication. No database here; ``sources/tokens.py`` stores what this
returns. Synchronous (authlib on an httpx client): callers run it in a thread.
"""

from __future__ import annotations

import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign

from ehi_bridge.sources.crypto import SigningKey
from ehi_bridge.sources.definitions import Platform, TokenAuth

with warnings.catch_warnings():
    # authlib 1.9 prefers the httpx2 package and warns, on every start of the service, when
    # it falls back to httpx. The service is built on httpx (its clients, errors and test
    # transports) and the lock pins authlib, so the fallback is deliberate here.
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    from authlib.integrations.httpx_client import OAuth2Client, OAuthError

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
ASSERTION_LIFETIME_SECONDS = 240  # SMART asks for at most 5 minutes
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


class OAuthFailure(Exception):
    """The authorization server refused (``error`` as it said: ``invalid_grant``,
    ``invalid_client`` …) or answered something that is not a token."""

    def __init__(self, error: str, status: int | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


class DiscoveryFailure(Exception):
    """The FHIR server does not say where its authorization endpoints are."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    authorize: str
    token: str


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    client_id: str
    token_auth: TokenAuth
    secret: str | None = None
    signing_key: SigningKey | None = None

    def __repr__(self) -> str:  # never print a secret
        return f"ClientCredentials({self.client_id!r}, {self.token_auth!r})"


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    access_token: str
    refresh_token: str | None
    expires_in: int | None
    scope: str | None
    patient: str | None

    def __repr__(self) -> str:
        return f"TokenAnswer(expires_in={self.expires_in}, patient={self.patient is not None})"


class _FreshPrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """RFC 7523 assertion signed per request: a new ``jti``, ``exp`` at most 5 minutes."""

    def sign(self, auth: Any, token_endpoint: str) -> Any:
        now = int(time.time())
        claims = {"jti": generate_token(36), "exp": now + ASSERTION_LIFETIME_SECONDS}
        return private_key_jwt_sign(
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            claims=claims,
            header={"kid": self.headers["kid"]} if self.headers else None,
            alg=self.alg,
        )


def discover(fhir_base_url: str, platform: Platform, http: httpx.Client | None = None) -> Endpoints:
    """The platform's explicit endpoints, else ``.well-known/smart-configuration``, else the
    ``oauth-uris`` extension of ``metadata``."""
    authorize = platform.endpoint(platform.authorize_endpoint, fhir_base_url)
    token = platform.endpoint(platform.token_endpoint, fhir_base_url)
    if authorize and token:
        return Endpoints(authorize, token)
    own = http is None
    client = http or httpx.Client(timeout=TIMEOUT)
    try:
        accept = {"Accept": "application/json"}
        answer = client.get(f"{fhir_base_url}/.well-known/smart-configuration", headers=accept)
        if answer.status_code == 200:
            config = answer.json()
            if isinstance(config, dict) and config.get("authorization_endpoint"):
                return Endpoints(
                    str(config["authorization_endpoint"]), str(config["token_endpoint"])
                )
        answer = client.get(
            f"{fhir_base_url}/metadata", headers={"Accept": "application/fhir+json"}
        )
        if answer.status_code == 200:
            found = _oauth_uris(answer.json())
            if found is not None:
                return found
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise DiscoveryFailure(f"discovery failed: {type(exc).__name__}") from exc
    finally:
        if own:
            client.close()
    raise DiscoveryFailure("no SMART configuration at this FHIR base")


def _oauth_uris(statement: Any) -> Endpoints | None:
    for rest in statement.get("rest", []) if isinstance(statement, dict) else []:
        for ext in rest.get("security", {}).get("extension", []):
            if ext.get("url") != OAUTH_URIS:
                continue
            uris = {e.get("url"): e.get("valueUri") for e in ext.get("extension", [])}
            if uris.get("authorize") and uris.get("token"):
                return Endpoints(str(uris["authorize"]), str(uris["token"]))
    return None


def new_state() -> str:
    return secrets.token_urlsafe(32)


def new_code_verifier() -> str:
    return str(generate_token(64))


def _client(credentials: ClientCredentials, token_endpoint: str, **kwargs: Any) -> OAuth2Client:
    secret: Any = credentials.secret
    if credentials.token_auth == "private_key_jwt":
        if credentials.signing_key is None:
            raise ValueError("private_key_jwt needs a signing key")
        secret = credentials.signing_key.key
    client = OAuth2Client(
        client_id=credentials.client_id,
        client_secret=secret,
        token_endpoint_auth_method=credentials.token_auth,
        timeout=TIMEOUT,
        **kwargs,
    )
    if credentials.token_auth == "private_key_jwt" and credentials.signing_key is not None:
        key = credentials.signing_key
        client.register_client_auth_method(
            _FreshPrivateKeyJWT(token_endpoint, headers={"kid": key.kid}, alg=key.alg)
        )
    return client


def authorize_url(
    platform: Platform,
    credentials: ClientCredentials,
    endpoints: Endpoints,
    fhir_base_url: str,
    redirect_uri: str,
    state: str,
    code_verifier: str,
) -> str:
    """The URL to send the patient's browser to (``aud`` is the FHIR base)."""
    with _client(
        credentials,
        endpoints.token,
        redirect_uri=redirect_uri,
        scope=" ".join(platform.scopes),
        code_challenge_method="S256" if platform.pkce else None,
    ) as client:
        url, _ = client.create_authorization_url(
            endpoints.authorize,
            state=state,
            code_verifier=code_verifier if platform.pkce else None,
            aud=fhir_base_url,
        )
    return str(url)


def _answer(token: dict[str, Any]) -> TokenAnswer:
    access = token.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuthFailure("invalid_response")
    expires = token.get("expires_in")
    refresh = token.get("refresh_token")
    scope = token.get("scope")
    patient = token.get("patient")
    return TokenAnswer(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_in=int(expires)
        if isinstance(expires, int | float | str) and str(expires).isdigit()
        else None,
        scope=scope if isinstance(scope, str) else None,
        patient=patient if isinstance(patient, str) else None,
    )


def _call(run: Any) -> TokenAnswer:
    try:
        return _answer(run())
    except OAuthError as exc:
        raise OAuthFailure(str(exc.error or "oauth_error")) from None
    except httpx.HTTPStatusError as exc:
        raise OAuthFailure("server_error", exc.response.status_code) from None
    except httpx.HTTPError as exc:
        raise OAuthFailure(f"network_error:{type(exc).__name__}") from None
    except (ValueError, TypeError, KeyError):
        raise OAuthFailure("invalid_response") from None


def exchange_code(
    credentials: ClientCredentials,
    token_endpoint: str,
    code: str,
    redirect_uri: str,
    code_verifier: str | None,
) -> TokenAnswer:
    with _client(credentials, token_endpoint, redirect_uri=redirect_uri) as client:
        extra: dict[str, Any] = {"code_verifier": code_verifier} if code_verifier else {}
        return _call(
            lambda: client.fetch_token(
                token_endpoint,
                grant_type="authorization_code",
                code=code,
                redirect_uri=redirect_uri,
                **extra,
            )
        )


def refresh(credentials: ClientCredentials, token_endpoint: str, refresh_token: str) -> TokenAnswer:
    with _client(credentials, token_endpoint) as client:
        return _call(lambda: client.refresh_token(token_endpoint, refresh_token=refresh_token))
