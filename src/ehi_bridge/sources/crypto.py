"""Tokens encrypted at rest, and the key that signs ``private_key_jwt`` assertions.

Tokens: AES-256-GCM with a key derived (HKDF-SHA256) from ``EHI_SOURCE_TOKEN_KEY`` or the
installation's generated secret; the associated data binds a ciphertext to its connection
and column, so a value copied to another row does not decrypt. Stored as ``v1.<base64>``.

Signing key: ``EHI_SOURCE_SIGNING_KEY`` (PEM or JWK), or an EC P-384 key derived from a
secret generated once per installation (the same in every process on the database). Only
its public half is ever published (``GET /.well-known/jwks.json``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc.jwk import ECKey, RSAKey

PREFIX = "v1."
# Order of the P-384 group (SEC 2): a derived private value must lie in [1, n-1].
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)


class TokenDecryptError(Exception):
    """A stored token does not decrypt with the current key."""


class TokenCipher:
    def __init__(self, secret: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"ehi-bridge source tokens v1"
        ).derive(secret.encode("utf-8"))
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: str | None, context: str) -> str | None:
        if plaintext is None:
            return None
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, stored: str | None, context: str) -> str | None:
        if stored is None:
            return None
        if not stored.startswith(PREFIX):
            raise TokenDecryptError("unknown token format")
        try:
            raw = base64.urlsafe_b64decode(stored[len(PREFIX) :])
            opened = self._aead.decrypt(raw[:12], raw[12:], context.encode("utf-8"))
        except (InvalidTag, ValueError) as exc:
            raise TokenDecryptError("token does not decrypt with the current key") from exc
        return opened.decode("utf-8")


@dataclass(frozen=True)
class SigningKey:
    key: ECKey | RSAKey
    alg: str

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    def public_jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        public.update({"use": "sig", "alg": self.alg, "kid": self.kid})
        return {"keys": [public]}


def _with_kid(key: ECKey | RSAKey) -> ECKey | RSAKey:
    if not key.kid:
        key.ensure_kid()
    return key


def signing_key_from_setting(value: str) -> SigningKey:
    """A configured key: PEM text or a JWK object as JSON (RSA → RS384, EC P-384 → ES384)."""
    text = value.strip()
    data: Any = json.loads(text) if text.startswith("{") else text.encode("utf-8")
    kty = data.get("kty") if isinstance(data, dict) else None
    key: ECKey | RSAKey
    if kty == "RSA" or (kty is None and b"RSA" in data):
        key = RSAKey.import_key(data)
        return SigningKey(_with_kid(key), "RS384")
    try:
        key = ECKey.import_key(data)
    except Exception:
        key = RSAKey.import_key(data)
        return SigningKey(_with_kid(key), "RS384")
    if key.curve_name != "P-384":
        raise ValueError("an EC signing key must be on P-384 (ES384)")
    return SigningKey(_with_kid(key), "ES384")


def derived_signing_key(secret: str) -> SigningKey:
    """An EC P-384 key derived from an installation secret (deterministic)."""
    digest = hashlib.sha384(b"ehi-bridge source signing key v1\x00" + secret.encode()).digest()
    private_value = int.from_bytes(digest, "big") % (P384_ORDER - 1) + 1
    private = ec.derive_private_key(private_value, ec.SECP384R1())
    return SigningKey(_with_kid(ECKey.import_key(private)), "ES384")
