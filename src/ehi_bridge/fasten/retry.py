"""Retry timing shared by outbound HTTP calls: full-jitter backoff and ``Retry-After``. Pure."""

from __future__ import annotations

import random
from datetime import UTC
from email.utils import parsedate_to_datetime

RETRYABLE_STATUS = frozenset({408, 425, 429})


def is_retryable_status(status: int) -> bool:
    """429 (and its cousins 408/425) and every 5xx are worth another attempt."""
    return status in RETRYABLE_STATUS or 500 <= status <= 599


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    ``now`` is the current Unix time (injected so the function stays pure). Returns None
    for a missing or unreadable header; a date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """AWS "full jitter": uniform in [0, min(cap, base * 2**(attempt-1))] (attempt >= 1)."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0.0, max(0.0, ceiling))
