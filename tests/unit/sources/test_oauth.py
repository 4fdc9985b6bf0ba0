"""The authorize URL and the RFC 7523 client assertion as sent (respx at the token URL)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import respx
from joserfc import jwt

from ehi_bridge.sources import oauth
from ehi_bridge.sources.crypto import derived_signing_key
from ehi_bridge.sources.definitions import definitions

BASE = "https://ehr.example/fhir"
TOKEN = "https://ehr.example/oauth/token"


def test_the_authorize_url_has_aud_state_and_s256() -> None:
    platform = definitions().platform("generic")
    creds = oauth.ClientCredentials("app", "none")
    verifier = oauth.new_code_verifier()
    url = oauth.authorize_url(
        platform,
        creds,
        oauth.Endpoints("https://ehr.example/authorize", TOKEN),
        BASE,
        "https://me.example/cb",
        "st4te",
        verifier,
    )
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["aud"] == BASE and query["state"] == "st4te"
    assert query["response_type"] == "code" and query["client_id"] == "app"
    assert query["code_challenge_method"] == "S256"
    digest = hashlib.sha256(verifier.encode()).digest()
    assert query["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert "offline_access" in query["scope"].split()


@respx.mock
def test_private_key_jwt_assertions_are_fresh_and_short_lived() -> None:
    key = derived_signing_key("unit")
    sent: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
        return httpx.Response(
            200,
            json={
                "access_token": "a",
                "refresh_token": "r2",
                "expires_in": 300,
                "token_type": "Bearer",
            },
        )

    respx.post(TOKEN).mock(side_effect=answer)
    creds = oauth.ClientCredentials("app", "private_key_jwt", signing_key=key)
    for _ in range(2):
        result = oauth.refresh(creds, TOKEN, "r1")
        assert result.refresh_token == "r2"
    jtis = set()
    for form in sent:
        assert (
            form["client_assertion_type"]
            == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        )
        token = jwt.decode(form["client_assertion"], key.key, algorithms=["ES384"])
        claims = token.claims
        assert token.header["alg"] == "ES384" and token.header["kid"] == key.kid
        assert claims["iss"] == claims["sub"] == "app" and claims["aud"] == TOKEN
        assert 0 < claims["exp"] - time.time() <= 300
        jtis.add(claims["jti"])
        assert "client_secret" not in form
    assert len(jtis) == 2


@respx.mock
def test_token_errors_are_named() -> None:
    respx.post(TOKEN).mock(return_value=httpx.Response(400, json={"error": "invalid_grant"}))
    creds = oauth.ClientCredentials("app", "none")
    try:
        oauth.refresh(creds, TOKEN, "old")
    except oauth.OAuthFailure as exc:
        assert exc.error == "invalid_grant"
    else:  # pragma: no cover
        raise AssertionError("refused refresh not raised")
    assert json.loads(json.dumps({"ok": True}))


def test_starting_the_service_prints_no_warning_from_authlib() -> None:
    """authlib warns on import that it falls back to httpx; the service's start-up (which
    imports the SMART sources) must not print that to every user's terminal."""
    started = subprocess.run(
        [sys.executable, "-c", "import ehi_bridge.runtime"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert started.stderr == ""
