import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from ehi_bridge.webhooks.signature import (
    InvalidSecretError,
    MissingHeaderError,
    SignatureError,
    Verifier,
    decode_secret,
    sign,
)

VECTORS = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "standard-webhooks-vectors.json").read_text()
)


def _headers(case: dict[str, Any]) -> dict[str, str]:
    headers = {
        "webhook-id": case["msg_id"],
        "webhook-timestamp": str(case.get("timestamp_header", case["timestamp"])),
        "webhook-signature": case["signature_header"],
    }
    headers.pop(case.get("drop_header", ""), None)
    return headers


@pytest.mark.parametrize("case", VECTORS["sign"], ids=lambda c: c["msg_id"])
def test_sign_vectors(case: dict[str, Any]) -> None:
    key = decode_secret(case["secret"])
    got = sign(key, case["msg_id"], case["timestamp"], case["payload"].encode())
    assert got == case["expected_signature"]


@pytest.mark.parametrize("case", VECTORS["verify_must_pass"], ids=lambda c: c["name"])
def test_verify_must_pass(case: dict[str, Any]) -> None:
    verifier = Verifier([case["secret"]])
    clock = case.get("clock", case["timestamp"])
    verified = verifier.verify(_headers(case), case["payload"].encode(), now=clock)
    assert verified.msg_id == case["msg_id"]


@pytest.mark.parametrize("case", VECTORS["verify_must_fail"], ids=lambda c: c["name"])
def test_verify_must_fail(case: dict[str, Any]) -> None:
    verifier = Verifier([case["secret"]])
    clock = case.get("clock", case["timestamp"])
    with pytest.raises(SignatureError):
        verifier.verify(_headers(case), case["payload"].encode(), now=clock)


@pytest.mark.parametrize("secret", VECTORS["secret_must_be_rejected"])
def test_secret_must_be_rejected(secret: str) -> None:
    with pytest.raises(InvalidSecretError):
        Verifier([secret])


def test_missing_header_is_its_own_error() -> None:
    verifier = Verifier(["whsec_" + base64.b64encode(b"k" * 24).decode()])
    with pytest.raises(MissingHeaderError):
        verifier.verify({"webhook-id": "x"}, b"{}")


def test_standardwebhooks_package_signs_and_we_verify() -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    body = b'{"id":"evt_1","type":"webhook.test","api_mode":"test","data":{}}'
    now = int(time.time())
    from datetime import UTC, datetime

    signature = Webhook(secret).sign("msg_1", datetime.fromtimestamp(now, UTC), body.decode())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": signature}
    assert Verifier([secret]).verify(headers, body).msg_id == "msg_1"
    # and the reverse: what we sign, the reference library accepts
    ours = sign(decode_secret(secret), "msg_2", now, body)
    payload = Webhook(secret).verify(
        body, {"webhook-id": "msg_2", "webhook-timestamp": str(now), "webhook-signature": ours}
    )
    assert payload["id"] == "evt_1"


def test_secret_without_prefix_and_rotation() -> None:
    old = base64.b64encode(b"old-secret-old-secret-00").decode()
    new = "whsec_" + base64.b64encode(b"new-secret-new-secret-00").decode()
    now = int(time.time())
    body = b"{}"
    signed_with_old = sign(decode_secret(old), "m", now, body)
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": str(now),
        "webhook-signature": signed_with_old,
    }
    assert Verifier([new, old]).verify(headers, body).timestamp == now
    with pytest.raises(SignatureError):
        Verifier([new]).verify(headers, body)
