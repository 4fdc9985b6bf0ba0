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
    Pace,
    next_batch_size,
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


def test_batch_halves_when_slow_and_grows_when_full_and_quick() -> None:
    slow = APPLY_TRANSACTION_TARGET_SECONDS * 2
    quick = APPLY_TRANSACTION_TARGET_SECONDS / 2
    assert next_batch_size(256, slow, claimed=256, maximum=256) == 128
    assert next_batch_size(MIN_APPLY_BATCH, slow, claimed=8, maximum=256) == MIN_APPLY_BATCH
    assert next_batch_size(64, quick, claimed=64, maximum=256) == 80
    assert next_batch_size(250, quick, claimed=250, maximum=256) == 256
    assert next_batch_size(64, quick, claimed=10, maximum=256) == 64  # backlog empty: keep


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
