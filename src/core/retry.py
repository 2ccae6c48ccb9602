"""Waiting, then trying again: backoff after a transient failure (2^(attempt-1) × SMS_RETRY_DELAY_MINUTES with
jitter, honouring Retry-After), and a short look again for what another function is about to make visible."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Final, TypeVar

from core import clock

T = TypeVar("T")

# How long a request that names something not there yet looks again before taking it as unknown: a receipt that
# overtakes our sent write, a reply that overtakes the `by_phone` index (both eventually visible within a second or so).
LOOK_AGAIN_WAITS: Final[tuple[float, ...]] = (0.25, 0.5, 1.0, 1.25)  # 3 s in all

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


def patiently(read: Callable[[], T], ready: Callable[[T], bool]) -> T:
    """`read()`, and again after each of LOOK_AGAIN_WAITS until `ready` holds of what it found; the last find."""
    found = read()
    for wait in LOOK_AGAIN_WAITS:
        if ready(found):
            break
        clock.sleep(wait)
        found = read()
    return found
