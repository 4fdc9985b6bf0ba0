from __future__ import annotations

import pytest
from pydantic import SecretStr

from ehi_bridge.auth.connect_links import ConnectLinkError, make_connect_token, read_connect_token
from ehi_bridge.config import Settings

KEY = "s3cret"


def settings(secret: str | None = KEY) -> Settings:
    return Settings(connect_link_secret=SecretStr(secret) if secret is not None else None)


def test_round_trip_until_expiry() -> None:
    token = make_connect_token(settings(), "patient-1", ttl=600, now=1_000_000)
    assert read_connect_token(settings(), token, now=1_000_000) == "patient-1"
    assert read_connect_token(settings(), token, now=1_000_599) == "patient-1"
    assert read_connect_token(settings(), token, now=1_000_600) is None


def test_rejects_tampering_other_secret_and_garbage() -> None:
    token = make_connect_token(settings(), "patient-1", ttl=600, now=1_000_000)
    assert read_connect_token(settings("other"), token, now=1_000_000) is None
    assert read_connect_token(settings(), token[:-2] + "xx", now=1_000_000) is None
    assert read_connect_token(settings(), "", now=1_000_000) is None
    assert read_connect_token(settings(), "a.b", now=1_000_000) is None
    assert read_connect_token(settings(), "x" * 5000, now=1_000_000) is None
    assert read_connect_token(settings(None), token, now=1_000_000) is None


def test_needs_a_secret() -> None:
    with pytest.raises(ConnectLinkError):
        make_connect_token(settings(None), "patient-1", ttl=60)
    with pytest.raises(ConnectLinkError):
        make_connect_token(settings(""), "patient-1", ttl=60)


def test_rotation_the_first_secret_signs_and_all_verify() -> None:
    old_only = Settings(connect_link_secret="old-secret")  # type: ignore[arg-type]
    rotating = Settings(connect_link_secret="new-secret,old-secret")  # type: ignore[arg-type]
    new_only = Settings(connect_link_secret="new-secret")  # type: ignore[arg-type]
    issued_before = make_connect_token(old_only, "patient-1", ttl=600, now=1_000_000)
    assert read_connect_token(rotating, issued_before, now=1_000_000) == "patient-1"
    issued_during = make_connect_token(rotating, "patient-2", ttl=600, now=1_000_000)
    assert read_connect_token(new_only, issued_during, now=1_000_000) == "patient-2"
    assert read_connect_token(old_only, issued_during, now=1_000_000) is None
    assert read_connect_token(new_only, issued_before, now=1_000_000) is None
