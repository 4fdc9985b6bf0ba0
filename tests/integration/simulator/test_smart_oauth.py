"""The SMART sandbox's discovery and OAuth over real HTTP: consent, the code flow with each
client authentication method, PKCE, refresh rotation, bearer checks."""

from __future__ import annotations

import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from ehi_bridge.simulator.smart.server import SmartSandbox
from tests.integration.simulator.smart_flow import (
    REDIRECT,
    SCOPES,
    authorize,
    consent_page,
    exchange,
    login,
    refresh,
)
from tests.support import free_port

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _patient(http: httpx.Client, smart: SmartSandbox, index: int = 1) -> str:
    patient_id: str = http.get(f"{smart.url}/_smart/patients").json()[index]["id"]
    return patient_id


def test_discovery(http: httpx.Client, smart: SmartSandbox) -> None:
    for profile in ("generic", "epic", "cerner", "athena"):
        base = smart.fhir_base(profile)
        config = http.get(f"{base}/.well-known/smart-configuration")
        assert config.status_code == 200
        body = config.json()
        assert body["authorization_endpoint"] == f"{smart.url}/{profile}/oauth/authorize"
        assert body["token_endpoint"] == f"{smart.url}/{profile}/oauth/token"
        assert body["code_challenge_methods_supported"] == ["S256"]
        assert set(body["token_endpoint_auth_methods_supported"]) >= {
            "client_secret_basic",
            "private_key_jwt",
        }
        assert "patient/*.read" in body["scopes_supported"]
        assert "launch-standalone" in body["capabilities"]
        meta = http.get(f"{base}/metadata")
        assert meta.headers["content-type"].startswith("application/fhir+json")
        security = meta.json()["rest"][0]["security"]["extension"][0]
        uris = {e["url"]: e["valueUri"] for e in security["extension"]}
        assert uris == {
            "authorize": body["authorization_endpoint"],
            "token": body["token_endpoint"],
        }
    assert http.get(f"{smart.url}/nope/fhir/metadata").status_code == 404


def test_consent_page_has_the_contract_form(http: httpx.Client, smart: SmartSandbox) -> None:
    page, _, _ = consent_page(http, smart.url, "epic")
    assert page.status_code == 200
    html = page.text
    assert '<form method="post" action="/epic/oauth/authorize">' in html
    assert re.search(r'<input type="hidden" name="request_id" value="[^"]+">', html)
    assert '<select name="patient"' in html
    patients = http.get(f"{smart.url}/_smart/patients").json()
    for p in patients:
        assert f'<option value="{p["id"]}">' in html
    for scope in SCOPES.split():
        assert f'<input type="checkbox" name="scope" value="{scope}" checked>' in html
    assert '<button type="submit" name="decision" value="allow" id="allow">' in html
    assert '<button type="submit" name="decision" value="deny" id="deny">' in html


def test_fixed_patient_is_the_only_choice(http: httpx.Client, smart: SmartSandbox) -> None:
    patient_id = _patient(http, smart, 2)
    assert http.post(
        f"{smart.url}/_smart/settings", json={"fixed_patient_id": patient_id}
    ).is_success
    page, _, _ = consent_page(http, smart.url, "generic")
    assert page.text.count("<option ") == 1 and f'value="{patient_id}"' in page.text


def test_deny_and_fragment_mode(http: httpx.Client, smart: SmartSandbox) -> None:
    page, state, _ = consent_page(http, smart.url, "generic", response_mode="fragment")
    request_id = re.search(r'name="request_id" value="([^"]+)"', page.text)
    assert request_id is not None
    answer = http.post(
        f"{smart.url}/generic/oauth/authorize",
        data={"request_id": request_id.group(1), "decision": "deny"},
    )
    assert answer.status_code == 303
    location = urlsplit(answer.headers["location"])
    assert location.query == ""
    assert parse_qs(location.fragment) == {"error": ["access_denied"], "state": [state]}
    again = http.post(
        f"{smart.url}/generic/oauth/authorize",
        data={"request_id": request_id.group(1), "decision": "allow"},
    )
    assert again.status_code == 400  # a consent request is used once


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"aud": "http://elsewhere/fhir"}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
)
def test_bad_authorize_requests_redirect_with_an_error(
    http: httpx.Client, smart: SmartSandbox, change: dict[str, str], error: str
) -> None:
    params = {
        "response_type": "code",
        "client_id": "ehi-public",
        "redirect_uri": REDIRECT,
        "scope": SCOPES,
        "state": "s1",
        "aud": smart.fhir_base("generic"),
        "code_challenge": "x" * 43,
        "code_challenge_method": "S256",
    }
    params.update(change)
    answer = http.get(f"{smart.url}/generic/oauth/authorize", params=params)
    assert answer.status_code == 303
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["error"] == [error] and query["state"] == ["s1"]


def test_unknown_client_or_redirect_gets_no_redirect(
    http: httpx.Client, smart: SmartSandbox
) -> None:
    page, _, _ = consent_page(http, smart.url, "generic", client_id="nobody")
    assert page.status_code == 400
    page, _, _ = consent_page(http, smart.url, "generic", redirect_uri="https://evil.example/cb")
    assert page.status_code == 400 and "location" not in page.headers


def test_public_client_flow_and_fhir_access(http: httpx.Client, smart: SmartSandbox) -> None:
    patient_id = _patient(http, smart)
    token = login(http, smart.url, "generic", patient_id)
    assert token["token_type"] == "Bearer"
    assert token["patient"] == patient_id
    assert token["expires_in"] == 300
    assert token["scope"] == SCOPES
    assert token["refresh_token"]
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    answer = http.get(f"{smart.fhir_base('generic')}/Patient/{patient_id}", headers=bearer)
    assert answer.status_code == 200
    assert answer.json()["id"] == patient_id
    assert http.get(f"{smart.url}/_smart/stats").json()["token_requests"]["generic"] == 1


def test_a_code_works_once_and_only_with_its_verifier_and_redirect(
    http: httpx.Client, smart: SmartSandbox
) -> None:
    patient_id = _patient(http, smart)
    consent = authorize(http, smart.url, "epic", patient_id)
    wrong = exchange(http, smart.url, "epic", consent, verifier=secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # The failed attempt used the code up.
    assert exchange(http, smart.url, "epic", consent).json()["error"] == "invalid_grant"
    consent = authorize(http, smart.url, "epic", patient_id)
    moved = exchange(http, smart.url, "epic", consent, redirect_uri="http://127.0.0.1:9/other")
    assert moved.status_code == 400
    consent = authorize(http, smart.url, "epic", patient_id)
    elsewhere = exchange(http, smart.url, "cerner", consent)
    assert elsewhere.status_code == 400
    consent = authorize(http, smart.url, "epic", patient_id)
    assert exchange(http, smart.url, "epic", consent).status_code == 200


def test_unticked_offline_access_gives_no_refresh_token(
    http: httpx.Client, smart: SmartSandbox
) -> None:
    patient_id = _patient(http, smart)
    consent = authorize(http, smart.url, "generic", patient_id, untick=("offline_access",))
    body = exchange(http, smart.url, "generic", consent).json()
    assert "refresh_token" not in body
    assert "offline_access" not in body["scope"].split()


def test_client_secret_basic(http: httpx.Client, smart: SmartSandbox) -> None:
    patient_id = _patient(http, smart)
    consent = authorize(http, smart.url, "cerner", patient_id, client_id="ehi-confidential")
    bad = exchange(
        http,
        smart.url,
        "cerner",
        consent,
        client_id="ehi-confidential",
        auth=("ehi-confidential", "nope"),
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    # Without authentication a confidential client is refused too.
    consent = authorize(http, smart.url, "cerner", patient_id, client_id="ehi-confidential")
    anonymous = exchange(http, smart.url, "cerner", consent, client_id="ehi-confidential")
    assert anonymous.status_code == 401
    consent = authorize(http, smart.url, "cerner", patient_id, client_id="ehi-confidential")
    good = exchange(
        http,
        smart.url,
        "cerner",
        consent,
        client_id="ehi-confidential",
        auth=("ehi-confidential", "sandbox-secret"),
    )
    assert good.status_code == 200, good.text
    assert good.headers["cache-control"] == "no-store"
    assert good.json()["patient"] == patient_id


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[tuple[str, type[_Jwks]]]:
    handler = type("Handler", (_Jwks,), {})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", handler
    server.shutdown()
    thread.join(timeout=5)


def _assertion(key: Any, alg: str, client_id: str, aud: str, **extra: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + 240,
        "jti": str(uuid.uuid4()),
    }
    claims.update(extra)
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


def _jwt_exchange(
    http: httpx.Client, smart: SmartSandbox, profile: str, client_id: str, assertion: str
) -> httpx.Response:
    patient_id = _patient(http, smart)
    consent = authorize(http, smart.url, profile, patient_id, client_id=client_id)
    return exchange(
        http,
        smart.url,
        profile,
        consent,
        extra={
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )


def test_private_key_jwt_with_inline_jwks(http: httpx.Client, smart: SmartSandbox) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    jwks = KeySet([key]).as_dict(private=False)
    registered = http.post(
        f"{smart.url}/_smart/clients",
        json={
            "client_id": "jwt-app",
            "profile": "epic",
            "auth_method": "private_key_jwt",
            "jwks": jwks,
        },
    )
    assert registered.status_code == 201
    aud = f"{smart.url}/epic/oauth/token"
    assertion = _assertion(key, "RS384", "jwt-app", aud)
    good = _jwt_exchange(http, smart, "epic", "jwt-app", assertion)
    assert good.status_code == 200, good.text
    replay = _jwt_exchange(http, smart, "epic", "jwt-app", assertion)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_client"
    forger = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    forged = _jwt_exchange(
        http, smart, "epic", "jwt-app", _assertion(forger, "RS384", "jwt-app", aud)
    )
    assert forged.status_code == 401 and forged.json()["error"] == "invalid_client"
    wrong_aud = _assertion(key, "RS384", "jwt-app", f"{smart.url}/generic/oauth/token")
    assert _jwt_exchange(http, smart, "epic", "jwt-app", wrong_aud).status_code == 401
    # The client is registered on epic only.
    page, _, _ = consent_page(http, smart.url, "generic", client_id="jwt-app")
    assert page.status_code == 400


def test_private_key_jwt_with_a_jwks_url(
    http: httpx.Client, smart: SmartSandbox, jwks_server: tuple[str, type[_Jwks]]
) -> None:
    url, handler = jwks_server
    key = ECKey.generate_key("P-384", parameters={"kid": "ec1"})
    handler.body = orjson.dumps(KeySet([key]).as_dict(private=False))
    http.post(
        f"{smart.url}/_smart/clients",
        json={"client_id": "jwt-url-app", "auth_method": "private_key_jwt", "jwks_url": url},
    ).raise_for_status()
    aud = f"{smart.url}/athena/oauth/token"
    good = _jwt_exchange(
        http, smart, "athena", "jwt-url-app", _assertion(key, "ES384", "jwt-url-app", aud)
    )
    assert good.status_code == 200, good.text
    # Keys rotate at the URL: the old key no longer verifies.
    handler.body = orjson.dumps(
        KeySet([ECKey.generate_key("P-384", parameters={"kid": "ec1"})]).as_dict(private=False)
    )
    stale = _jwt_exchange(
        http, smart, "athena", "jwt-url-app", _assertion(key, "ES384", "jwt-url-app", aud)
    )
    assert stale.status_code == 401


def test_refresh_tokens_rotate(http: httpx.Client, smart: SmartSandbox) -> None:
    patient_id = _patient(http, smart)
    first = login(http, smart.url, "generic", patient_id)
    token_url = f"{smart.url}/generic/oauth/token"
    second = refresh(http, smart.url, "generic", first["refresh_token"])
    assert second.status_code == 200
    body = second.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["access_token"] != first["access_token"]
    assert body["patient"] == patient_id
    old = refresh(http, smart.url, "generic", first["refresh_token"])
    assert old.status_code == 400 and old.json()["error"] == "invalid_grant"
    assert refresh(http, smart.url, "generic", body["refresh_token"]).status_code == 200
    # Another client cannot use it.
    third = login(http, smart.url, "generic", patient_id)
    other = http.post(
        token_url,
        data={"grant_type": "refresh_token", "refresh_token": third["refresh_token"]},
        auth=("ehi-confidential", "sandbox-secret"),
    )
    assert other.status_code == 400


def test_bearer_checks(http: httpx.Client, smart: SmartSandbox) -> None:
    patient_id = _patient(http, smart)
    other_id = _patient(http, smart, 3)
    base = smart.fhir_base("generic")
    missing = http.get(f"{base}/Patient/{patient_id}")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    junk = http.get(f"{base}/Patient/{patient_id}", headers={"Authorization": "Bearer junk"})
    assert junk.status_code == 401 and 'error="invalid_token"' in junk.headers["www-authenticate"]
    http.post(
        f"{smart.url}/_smart/settings", json={"access_token_ttl_seconds": 0.5}
    ).raise_for_status()
    token = login(http, smart.url, "generic", patient_id)
    assert token["expires_in"] == 0.5
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert http.get(f"{base}/Patient/{patient_id}", headers=bearer).status_code == 200
    assert http.get(f"{base}/Patient/{other_id}", headers=bearer).status_code == 403
    assert (
        http.get(f"{base}/Condition", params={"patient": other_id}, headers=bearer).status_code
        == 403
    )
    assert (
        http.get(f"{smart.fhir_base('epic')}/Patient/{patient_id}", headers=bearer).status_code
        == 401
    )
    time.sleep(0.6)
    expired = http.get(f"{base}/Patient/{patient_id}", headers=bearer)
    assert expired.status_code == 401 and "expired" in expired.headers["www-authenticate"]


def test_scopes_limit_what_a_token_reads(http: httpx.Client, smart: SmartSandbox) -> None:
    patient_id = _patient(http, smart)
    token = login(
        http, smart.url, "generic", patient_id, scope="launch/patient patient/Condition.rs"
    )
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    base = smart.fhir_base("generic")
    assert (
        http.get(f"{base}/Condition", params={"patient": patient_id}, headers=bearer).status_code
        == 200
    )
    assert (
        http.get(f"{base}/Procedure", params={"patient": patient_id}, headers=bearer).status_code
        == 403
    )
