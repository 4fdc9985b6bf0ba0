"""The SMART sandbox's pure OAuth checks: PKCE, Basic, client assertions, redirects, scopes."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from ehi_bridge.simulator.smart import oauth
from ehi_bridge.simulator.smart.config import SmartConfig
from ehi_bridge.simulator.smart.state import SmartState

AUD = "http://127.0.0.1:8910/epic/oauth/token"
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, other key
JWKS = KeySet([RSA, EC]).as_dict(private=False)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "app",
        "sub": "app",
        "aud": AUD,
        "exp": now + 240,
        "iat": now,
        "jti": "jti-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict[str, Any], key: Any = RSA, alg: str = "RS384") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


def _verify(assertion: str, **kwargs: Any) -> oauth.AssertionClaims:
    return oauth.verify_client_assertion(
        assertion, JWKS, client_id="app", audience=AUD, now=time.time(), **kwargs
    )


def test_pkce_matches_the_rfc_7636_example() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert oauth.pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert oauth.verify_pkce(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")


@pytest.mark.parametrize(
    "verifier",
    [None, "", "x" * 42, "x" * 129, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK", "a b" * 20],
)
def test_pkce_refuses_wrong_or_malformed_verifiers(verifier: str | None) -> None:
    assert not oauth.verify_pkce(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")


def test_basic_credentials_are_form_decoded() -> None:
    header = "Basic " + base64.b64encode(b"my%20app:s%3Acret").decode()
    assert oauth.parse_basic(header) == ("my app", "s:cret")
    assert oauth.parse_basic("Basic !!!") is None
    assert oauth.parse_basic("Bearer abc") is None
    assert oauth.parse_basic("Basic " + base64.b64encode(b"nocolon").decode()) is None
    assert oauth.secret_matches("a", "a") and not oauth.secret_matches("a", "b")
    assert not oauth.secret_matches("a", None)


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS384"), (EC, "ES384")])
def test_a_good_assertion_passes(key: Any, alg: str) -> None:
    claims = _verify(_sign(_claims(), key, alg))
    assert claims.jti == "jti-1"


def test_aud_may_be_a_list() -> None:
    assert _verify(_sign(_claims(aud=["x", AUD]))).jti == "jti-1"


@pytest.mark.parametrize(
    ("assertion", "why"),
    [
        (_sign(_claims(), OTHER), "signature"),
        (_sign(_claims(aud="http://127.0.0.1:8910/generic/oauth/token")), "aud"),
        (_sign(_claims(exp=int(time.time()) - 120)), "expired"),
        (_sign(_claims(exp=int(time.time()) + 3600)), "too far"),
        (_sign(_claims(iss="other")), "iss"),
        (_sign(_claims(sub="other")), "iss"),
        (_sign(_claims(jti=None)), "jti"),
        (_sign(_claims(exp=None)), "exp"),
        (_sign(_claims(nbf=int(time.time()) + 600)), "not valid yet"),
        ("not.a.jwt", "format"),
    ],
)
def test_bad_assertions_are_invalid_client(assertion: str, why: str) -> None:
    with pytest.raises(oauth.OAuthError) as caught:
        _verify(assertion)
    assert caught.value.error == "invalid_client"
    assert caught.value.status == 401
    assert why in caught.value.description


def test_algorithms_other_than_rs384_and_es384_are_refused() -> None:
    secret = OctKey.generate_key(256)
    forged = jwt.encode({"alg": "HS256"}, _claims(), secret)
    with pytest.raises(oauth.OAuthError):
        oauth.verify_client_assertion(
            forged,
            KeySet([secret]).as_dict(private=True),
            client_id="app",
            audience=AUD,
            now=time.time(),
        )
    rs256 = jwt.encode({"alg": "RS256", "kid": "rsa-1"}, _claims(), RSA)
    with pytest.raises(oauth.OAuthError):
        _verify(rs256)


def test_an_empty_jwks_is_refused() -> None:
    with pytest.raises(oauth.OAuthError, match="JWKS"):
        oauth.verify_client_assertion(
            _sign(_claims()), {"keys": []}, client_id="app", audience=AUD, now=time.time()
        )


def test_a_replayed_jti_is_caught_by_the_state() -> None:
    state = SmartState(SmartConfig())
    exp = time.time() + 60
    assert state.remember_jti("app", "j1", exp)
    assert not state.remember_jti("app", "j1", exp)
    assert state.remember_jti("other-app", "j1", exp)


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("http://127.0.0.1:5000/cb", True),
        ("http://localhost/cb", True),
        ("http://[::1]:80/cb", True),
        ("https://example.org/cb", False),
        ("http://127.0.0.1/cb#frag", False),
        ("javascript:alert(1)", False),
    ],
)
def test_loopback_redirects(uri: str, ok: bool) -> None:
    assert oauth.redirect_allowed([], uri) is ok


def test_registered_redirects_match_exactly() -> None:
    assert oauth.redirect_allowed(["https://app.example/cb"], "https://app.example/cb")
    assert not oauth.redirect_allowed(["https://app.example/cb"], "https://app.example/cb2")
    assert not oauth.redirect_allowed(["https://app.example/cb"], "http://127.0.0.1/cb")


@pytest.mark.parametrize(
    ("scopes", "rtype", "interaction", "ok"),
    [
        (["patient/*.read"], "Condition", "search", True),
        (["patient/*.rs"], "Condition", "read", True),
        (["patient/Condition.rs"], "Condition", "search", True),
        (["patient/Condition.r"], "Condition", "search", False),
        (["patient/Condition.read"], "Procedure", "read", False),
        (["patient/DocumentReference.read"], "Binary", "read", True),
        (["patient/*.write"], "Condition", "read", False),
        (["system/*.read"], "Condition", "read", False),
        (["openid", "offline_access"], "Condition", "read", False),
        (["user/*.*"], "Condition", "read", True),
    ],
)
def test_scopes(scopes: list[str], rtype: str, interaction: str, ok: bool) -> None:
    assert oauth.scope_allows(scopes, rtype, interaction) is ok


def test_parse_scopes_keeps_order_without_repeats() -> None:
    assert oauth.parse_scopes(" openid  patient/*.read openid ") == ["openid", "patient/*.read"]
    assert oauth.parse_scopes(None) == []
