from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ehi_bridge.sources.crypto import (
    TokenCipher,
    TokenDecryptError,
    derived_signing_key,
    signing_key_from_setting,
)


def test_tokens_round_trip_and_are_bound_to_their_row() -> None:
    cipher = TokenCipher("a long random secret")
    sealed = cipher.encrypt("access-token-123", "access:c1")
    assert sealed is not None and "access-token-123" not in sealed
    assert cipher.decrypt(sealed, "access:c1") == "access-token-123"
    with pytest.raises(TokenDecryptError):
        cipher.decrypt(sealed, "access:c2")  # copied to another connection
    with pytest.raises(TokenDecryptError):
        TokenCipher("another key").decrypt(sealed, "access:c1")
    assert cipher.encrypt(None, "x") is None


def test_the_derived_key_is_stable_and_public_only_in_the_jwks() -> None:
    one, two = derived_signing_key("secret"), derived_signing_key("secret")
    assert one.kid == two.kid and one.alg == "ES384"
    assert derived_signing_key("other").kid != one.kid
    (published,) = one.public_jwks()["keys"]
    assert published["kty"] == "EC" and published["crv"] == "P-384"
    assert "d" not in published and published["kid"] == one.kid


def test_configured_keys_pem_or_jwk() -> None:
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert signing_key_from_setting(rsa_pem.decode()).alg == "RS384"
    ec_pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = signing_key_from_setting(ec_pem.decode())
    assert key.alg == "ES384"
    import json

    assert signing_key_from_setting(json.dumps(key.key.as_dict(private=True))).kid == key.kid
    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError):
        signing_key_from_setting(p256.decode())
