"""Backoff after a transient failure: 2^(attempt-1) × SMS_RETRY_DELAY_MINUTES with jitter, honouring Retry-After."""

from __future__ import annotations

import random
from datetime import timedelta

_rng = random.Random()


def seed(value: int) -> None:
    """Make jitter reproducible (simulations and benchmarks)."""
    _rng.seed(value)


def backoff(attempt: int, base_minutes: float, retry_after_seconds: float | None = None) -> timedelta:
    """How long to wait before attempt `attempt + 1`, after `attempt` (1-based) failed.

    Equal jitter: half the exponential delay is kept, the other half is random, so retries of a burst that
    failed together spread out instead of coming back together. A provider's Retry-After is a floor.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    ceiling = (2 ** (attempt - 1)) * base_minutes * 60.0
    delay = ceiling / 2 + _rng.uniform(0, ceiling / 2)
    if retry_after_seconds is not None:
        delay = max(delay, retry_after_seconds)
    return timedelta(seconds=delay)
