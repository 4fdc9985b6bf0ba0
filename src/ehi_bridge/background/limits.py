"""Bounded concurrency per export stage, and a pace for requests to Fasten.

Workflows are coroutines that hold nothing while they wait (``DBOS.sleep_async``); only the
step doing I/O holds its stage's slot. So a thousand exports waiting on Fasten cost no
threads and block no download or ingest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ehi_bridge.config import Settings


def next_slot(now: float, next_free: float, interval: float) -> tuple[float, float]:
    """When the next request may go (``start``) and when the one after it may (pure)."""
    start = max(now, next_free)
    return start, start + interval


# An SQLite write transaction of the applier holds the webhook receiver's commits back for as
# long as it lasts, so its batch size is steered to keep it about this short.
APPLY_TRANSACTION_TARGET_SECONDS = 0.008
MIN_APPLY_BATCH = 8
# Deliveries arriving faster than this keep the receiver busy enough to be given way to.
BUSY_RECEIVER_PER_SECOND = 500.0
# The applier's share of the time while the receiver is busy (``apply_share_while_receiving``
# unset). SQLite: of its single write lock, which the receiver's commits wait for. PostgreSQL:
# of the applier's transactions, which take CPU (its process and its server backend) from
# the receiver, not a lock. Chosen on two cores for a receiver at >= 80 % of its own
# throughput and a drain near or above 2,000 events/s (docs/benchmarks.md).
SQLITE_APPLY_SHARE = 0.16
POSTGRES_APPLY_SHARE = 0.5


def receiving_fast(new_rows: int, seconds: float) -> bool:
    """Whether the inbox grew fast enough since the last look that the receiver comes first
    (pure; the first look, ``seconds`` from an arbitrary origin, counts as not busy)."""
    return 0 < seconds < 60 and new_rows / seconds >= BUSY_RECEIVER_PER_SECOND


def apply_share(configured: float | None, sqlite: bool) -> float:
    """The applier's share of the time while the receiver is busy (pure)."""
    if configured is not None:
        return configured
    return SQLITE_APPLY_SHARE if sqlite else POSTGRES_APPLY_SHARE


def yield_to_receiver(busy_seconds: float, share: float) -> float:
    """The pause after a batch that keeps the applier's work to ``share`` of the time (pure)."""
    return busy_seconds * (1 - share) / share


# Weight of the newest batch in the applier's running estimate of its write time per event.
PER_EVENT_SMOOTHING = 0.25


@dataclass(frozen=True, slots=True)
class BatchSteering:
    """The applier's batch size on SQLite, steered so a batch holds the write gate about
    :data:`APPLY_TRANSACTION_TARGET_SECONDS`: target over a smoothed write time per event
    (pure). Smoothed, because one hold stretched by the scheduler (the machine is shared
    with the receiver) must not halve the batch: small batches pay the per-transaction cost
    on fewer events, and take more of the gate for the same drain."""

    size: int
    per_event: float = 0.0  # seconds of write time per event, 0 before the first batch

    def after(self, elapsed: float, claimed: int, maximum: int) -> BatchSteering:
        if claimed <= 0:
            return self
        sample = elapsed / claimed
        per_event = (
            sample
            if self.per_event <= 0
            else self.per_event + PER_EVENT_SMOOTHING * (sample - self.per_event)
        )
        size = int(APPLY_TRANSACTION_TARGET_SECONDS / per_event) if per_event > 0 else maximum
        return BatchSteering(max(MIN_APPLY_BATCH, min(maximum, size)), per_event)


@dataclass
class Pace:
    """At most ``per_second`` starts per second, spaced evenly (0: unlimited)."""

    per_second: float
    clock: Callable[[], float] = time.monotonic
    _next_free: float = 0.0

    async def wait(self) -> None:
        if self.per_second <= 0:
            return
        now = self.clock()
        start, self._next_free = next_slot(now, self._next_free, 1.0 / self.per_second)
        if start > now:
            await asyncio.sleep(start - now)


@dataclass
class StageLimits:
    requests: asyncio.Semaphore
    downloads: asyncio.Semaphore
    ingests: asyncio.Semaphore
    pace: Pace = field(default_factory=lambda: Pace(0))

    @classmethod
    def from_settings(cls, settings: Settings) -> StageLimits:
        return cls(
            requests=asyncio.Semaphore(settings.fasten_request_concurrency),
            downloads=asyncio.Semaphore(settings.download_concurrency),
            ingests=asyncio.Semaphore(settings.ingest_concurrency),
            pace=Pace(settings.fasten_requests_per_second),
        )

    @asynccontextmanager
    async def fasten_request(self) -> AsyncIterator[None]:
        async with self.requests:
            await self.pace.wait()
            yield
