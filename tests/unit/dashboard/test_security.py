"""Pure parts of the dashboard: rate limiter, cursors, redirects, session signing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ehi_bridge.dashboard.endpoints import _safe_next
from ehi_bridge.dashboard.repository import decode_cursor, encode_cursor
from ehi_bridge.dashboard.security import LoginLimiter, tokens_match


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_blocks_a_client_and_user_after_the_allowed_failures_then_forgets() -> None:
    clock = Clock()
    limiter = LoginLimiter(max_per_user=3, max_per_client=100, window_seconds=60, clock=clock)
    for _ in range(3):
        assert not limiter.blocked("1.2.3.4", "alice")
        limiter.failed("1.2.3.4", "alice")
    assert limiter.blocked("1.2.3.4", "alice")
    assert limiter.blocked("1.2.3.4", "ALICE ")
    # Another client is not blocked: guessing cannot lock a named operator out.
    assert not limiter.blocked("5.6.7.8", "alice")
    assert not limiter.blocked("1.2.3.4", "bob")
    clock.now += 61
    assert not limiter.blocked("1.2.3.4", "alice")


def test_limiter_blocks_a_client_trying_many_names() -> None:
    clock = Clock()
    limiter = LoginLimiter(max_per_user=100, max_per_client=4, window_seconds=60, clock=clock)
    for i in range(4):
        limiter.failed("1.2.3.4", f"user{i}")
    assert limiter.blocked("1.2.3.4", "someone-new")
    assert not limiter.blocked("9.9.9.9", "someone-new")


def test_success_clears_the_users_failures() -> None:
    limiter = LoginLimiter(max_per_user=2, clock=Clock())
    limiter.failed("c", "alice")
    limiter.succeeded("c", "alice")
    limiter.failed("c", "alice")
    assert not limiter.blocked("c", "alice")


def test_cursor_round_trip_and_garbage() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, "abc|def")) == (at, "abc|def")
    assert decode_cursor("not-base64!!") is None
    assert decode_cursor("") is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/dashboard/events?status=parked", "/dashboard/events?status=parked"),
        ("//evil.example/dashboard", "/dashboard"),
        ("https://evil.example/dashboard", "/dashboard"),
        ("/api/connections", "/dashboard"),
        (None, "/dashboard"),
    ],
)
def test_next_stays_on_the_dashboard(given: str | None, expected: str) -> None:
    assert _safe_next(given) == expected


def test_tokens_match() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd")
    assert not tokens_match("abc", None)
    assert not tokens_match("abc", "")
