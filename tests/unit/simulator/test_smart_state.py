"""The SMART sandbox's memory: single-use codes, rotating refresh tokens, expiry, faults."""

from __future__ import annotations

from ehi_bridge.simulator.smart.config import SmartConfig
from ehi_bridge.simulator.smart.state import Fault, PendingAuthorization, SmartState


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _state() -> tuple[SmartState, Clock]:
    clock = Clock()
    return SmartState(SmartConfig(access_token_ttl_seconds=30), now=clock), clock


def _pending(state: SmartState) -> PendingAuthorization:
    return PendingAuthorization(
        profile="generic",
        client_id="ehi-public",
        redirect_uri="http://127.0.0.1/cb",
        scopes=["offline_access", "patient/*.read"],
        state="s",
        code_challenge="c",
        response_mode="query",
        expires_at=state.now() + 600,
    )


def test_codes_are_single_use_and_expire_after_60_seconds() -> None:
    state, clock = _state()
    code = state.issue_code(_pending(state), "p1", ["patient/*.read"])
    found = state.redeem_code(code)
    assert found is not None and found.patient_id == "p1" and found.code_challenge == "c"
    assert state.redeem_code(code) is None
    late = state.issue_code(_pending(state), "p1", [])
    clock.t += 61
    assert state.redeem_code(late) is None


def test_pending_requests_are_taken_once() -> None:
    state, _ = _state()
    request_id = state.add_pending(_pending(state))
    assert state.take_pending(request_id) is not None
    assert state.take_pending(request_id) is None


def test_refresh_tokens_rotate_and_access_tokens_expire() -> None:
    state, clock = _state()
    code = state.redeem_code(state.issue_code(_pending(state), "p1", ["offline_access"]))
    assert code is not None
    grant = state.new_grant(code)
    access, refresh, ttl = state.issue_tokens(grant)
    assert refresh is not None and ttl == 30
    assert state.access(access)[0] is grant
    assert state.use_refresh(refresh) is grant
    assert state.use_refresh(refresh) is None  # rotated: the old one is dead
    clock.t += 31
    found, why = state.access(access)
    assert found is None and "expired" in why


def test_no_refresh_token_without_offline_access() -> None:
    state, _ = _state()
    code = state.redeem_code(state.issue_code(_pending(state), "p1", ["patient/*.read"]))
    assert code is not None
    assert state.issue_tokens(state.new_grant(code))[1] is None


def test_revoking_a_grant_kills_its_tokens() -> None:
    state, _ = _state()
    code = state.redeem_code(state.issue_code(_pending(state), "p1", ["offline_access"]))
    assert code is not None
    grant = state.new_grant(code)
    access, refresh, _ = state.issue_tokens(grant)
    state.revoke_grant(grant.grant_id)
    assert state.access(access)[0] is None
    assert refresh is not None and state.use_refresh(refresh) is None


def test_expire_access_tokens() -> None:
    state, _ = _state()
    code = state.redeem_code(state.issue_code(_pending(state), "p1", []))
    assert code is not None
    access, _, _ = state.issue_tokens(state.new_grant(code))
    assert state.expire_access_tokens() == 1
    assert state.access(access)[0] is None


def test_faults_apply_by_profile_and_type_and_count_down() -> None:
    state, _ = _state()
    state.add_fault(Fault("rate_limit", profile="epic", resource_type="Condition", remaining=2))
    assert state.take_fault("rate_limit", "generic", "Condition") is None
    assert state.take_fault("rate_limit", "epic", "Procedure") is None
    assert state.take_fault("rate_limit", "epic", "Condition") is not None
    assert state.take_fault("rate_limit", "epic", "Condition") is not None
    assert state.take_fault("rate_limit", "epic", "Condition") is None
    state.add_fault(Fault("slow", delay_ms=5))
    for _ in range(5):
        assert state.take_fault("slow", "athena", None) is not None
    state.clear_faults()
    assert state.take_fault("slow", "athena", None) is None


def test_in_flight_is_tracked_per_host() -> None:
    state, _ = _state()
    for _ in range(3):
        state.enter("10.0.0.1", "search")
    state.enter("10.0.0.2", "read")
    for _ in range(3):
        state.leave("10.0.0.1")
    state.enter("10.0.0.1", "read")
    stats = state.stats()
    assert stats["max_in_flight"] == 3
    assert stats["max_in_flight_by_host"] == {"10.0.0.1": 3, "10.0.0.2": 1}
    assert stats["requests"] == 5 and stats["by_path_kind"] == {"read": 2, "search": 3}
    state.reset_stats()
    assert state.stats()["requests"] == 0
