"""Pure parts of the background process: the Fasten pace, the applier's batch steering,
the settings handed to the child process."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from ehi_bridge.background.child import settings_from_payload, settings_payload
from ehi_bridge.background.limits import (
    APPLY_TRANSACTION_TARGET_SECONDS,
    BUSY_RECEIVER_PER_SECOND,
    MIN_APPLY_BATCH,
    POSTGRES_APPLY_SHARE,
    SQLITE_APPLY_SHARE,
    BatchSteering,
    Pace,
    apply_share,
    next_slot,
    receiving_fast,
    yield_to_receiver,
)
from ehi_bridge.config import Settings


def test_next_slot_spaces_requests_evenly() -> None:
    assert next_slot(now=10.0, next_free=0.0, interval=0.5) == (10.0, 10.5)
    assert next_slot(now=10.1, next_free=10.5, interval=0.5) == (10.5, 11.0)


def test_pace_lets_through_at_most_its_rate() -> None:
    clock = [100.0]
    slept: list[float] = []
    pace = Pace(per_second=4, clock=lambda: clock[0])

    async def go() -> None:
        original = asyncio.sleep

        async def fake_sleep(seconds: float) -> None:
            slept.append(round(seconds, 6))
            await original(0)

        asyncio.sleep = fake_sleep  # type: ignore[assignment]
        try:
            for _ in range(5):
                await pace.wait()
        finally:
            asyncio.sleep = original  # type: ignore[assignment]

    asyncio.run(go())
    assert slept == [0.25, 0.5, 0.75, 1.0]  # 5 starts at 4/s: the last one a second later


def test_pace_of_zero_never_waits() -> None:
    pace = Pace(per_second=0)
    asyncio.run(pace.wait())
    assert pace._next_free == 0.0


def test_batch_size_settles_where_a_batch_holds_the_gate_for_the_target() -> None:
    fixed, per_event = 0.0015, 0.00008  # per transaction, per event
    steering = BatchSteering(MIN_APPLY_BATCH)
    for _ in range(40):
        steering = steering.after(fixed + per_event * steering.size, steering.size, 256)
    settled = (APPLY_TRANSACTION_TARGET_SECONDS - fixed) / per_event  # 81 events
    assert abs(steering.size - settled) <= 2


def test_one_slow_batch_does_not_halve_the_batch() -> None:
    steady = BatchSteering(64, per_event=APPLY_TRANSACTION_TARGET_SECONDS / 64)
    after_slow = steady.after(APPLY_TRANSACTION_TARGET_SECONDS * 3, 64, 256)
    assert 32 < after_slow.size < 64
    assert steady.after(APPLY_TRANSACTION_TARGET_SECONDS, 64, 256).size == 64


def test_batch_size_stays_within_bounds_and_an_empty_batch_changes_nothing() -> None:
    assert BatchSteering(64).after(10.0, 8, 256).size == MIN_APPLY_BATCH
    assert BatchSteering(64).after(0.000001, 64, 256).size == 256
    steady = BatchSteering(64, per_event=0.0001)
    assert steady.after(0.5, 0, 256) == steady


def test_settings_reach_the_child_whole_secrets_included() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url="sqlite:////tmp/x.sqlite3",
        test_webhook_secrets="whsec_a,whsec_b",
        test_private_key=SecretStr("private_test_k"),
        export_deadline_minutes_by_platform={"epic": 90},
        apply_batch_size=17,
    )
    again = settings_from_payload(settings_payload(settings))
    assert again.webhook_secrets("test") == ["whsec_a", "whsec_b"]
    assert again.test_private_key.get_secret_value() == "private_test_k"
    assert again.model_dump() == settings.model_dump()


def test_the_receiver_counts_as_busy_only_when_deliveries_arrive_fast() -> None:
    assert receiving_fast(new_rows=int(BUSY_RECEIVER_PER_SECOND), seconds=1.0)
    assert not receiving_fast(new_rows=int(BUSY_RECEIVER_PER_SECOND) - 1, seconds=1.0)
    assert not receiving_fast(new_rows=0, seconds=0.01)
    # The first look measures from an arbitrary origin: never busy.
    assert not receiving_fast(new_rows=10_000_000, seconds=5_000.0)
    assert not receiving_fast(new_rows=5, seconds=0.0)


def test_yielding_keeps_the_applier_to_its_share_of_the_time() -> None:
    for share in (0.1, 0.25, 0.5, 1.0):
        pause = yield_to_receiver(busy_seconds=0.004, share=share)
        assert 0.004 / (0.004 + pause) == pytest.approx(share)


def test_the_applier_s_share_is_the_configured_one_or_its_database_s() -> None:
    assert apply_share(None, sqlite=True) == SQLITE_APPLY_SHARE
    assert apply_share(None, sqlite=False) == POSTGRES_APPLY_SHARE
    # SQLite's is a share of the lock every delivery waits for: the smaller one.
    assert SQLITE_APPLY_SHARE < POSTGRES_APPLY_SHARE
    assert apply_share(0.35, sqlite=True) == apply_share(0.35, sqlite=False) == 0.35
