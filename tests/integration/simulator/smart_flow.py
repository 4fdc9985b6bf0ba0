"""Helpers for the SMART sandbox tests: the authorization-code flow as a client runs it."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx

REDIRECT = "http://127.0.0.1:9/callback"
SCOPES = "openid fhirUser launch/patient offline_access patient/*.read"
_REQUEST_ID = re.compile(r'name="request_id" value="([^"]+)"')


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class Consent:
    code: str
    state: str
    verifier: str


def consent_page(
    http: httpx.Client,
    origin: str,
    profile: str,
    *,
    client_id: str = "ehi-public",
    redirect_uri: str = REDIRECT,
    scope: str = SCOPES,
    verifier: str | None = None,
    response_mode: str | None = None,
) -> tuple[httpx.Response, str, str]:
    """GET the consent page: (response, state, verifier)."""
    verifier = verifier or secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(8)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": f"{origin}/{profile}/fhir",
        "code_challenge": challenge_of(verifier),
        "code_challenge_method": "S256",
    }
    if response_mode:
        params["response_mode"] = response_mode
    return http.get(f"{origin}/{profile}/oauth/authorize", params=params), state, verifier


def authorize(
    http: httpx.Client,
    origin: str,
    profile: str,
    patient_id: str,
    *,
    client_id: str = "ehi-public",
    redirect_uri: str = REDIRECT,
    scope: str = SCOPES,
    untick: tuple[str, ...] = (),
) -> Consent:
    page, state, verifier = consent_page(
        http, origin, profile, client_id=client_id, redirect_uri=redirect_uri, scope=scope
    )
    assert page.status_code == 200, page.text
    match = _REQUEST_ID.search(page.text)
    assert match is not None
    ticked = [s for s in scope.split() if s not in untick]
    answer = http.post(
        f"{origin}/{profile}/oauth/authorize",
        data={
            "request_id": match.group(1),
            "patient": patient_id,
            "scope": ticked,
            "decision": "allow",
        },
    )
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(redirect_uri)
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state]
    return Consent(code=query["code"][0], state=state, verifier=verifier)


def exchange(
    http: httpx.Client,
    origin: str,
    profile: str,
    consent: Consent,
    *,
    client_id: str = "ehi-public",
    redirect_uri: str = REDIRECT,
    verifier: str | None = None,
    auth: tuple[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": consent.code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier or consent.verifier,
    }
    if auth is None and not extra:
        data["client_id"] = client_id
    data.update(extra or {})
    return http.post(f"{origin}/{profile}/oauth/token", data=data, auth=auth)


def refresh(
    http: httpx.Client, origin: str, profile: str, refresh_token: str, client_id: str = "ehi-public"
) -> httpx.Response:
    """A public client's refresh-token grant."""
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    return http.post(f"{origin}/{profile}/oauth/token", data=data)


def login(
    http: httpx.Client, origin: str, profile: str, patient_id: str, scope: str = SCOPES
) -> dict[str, str]:
    """A public client's whole flow: the token answer."""
    consent = authorize(http, origin, profile, patient_id, scope=scope)
    answer = exchange(http, origin, profile, consent)
    assert answer.status_code == 200, answer.text
    body: dict[str, str] = answer.json()
    return body
