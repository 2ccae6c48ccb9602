"""Rules a mutation probe found unpinned: backoff's floors, and a quiet window that starts after midnight."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.retry import backoff
from core.timing import next_allowed

pytestmark = pytest.mark.unit


def test_a_providers_retry_after_is_a_floor_not_a_ceiling() -> None:
    assert backoff(1, 5, retry_after_seconds=3600) >= timedelta(hours=1)


def test_backoff_keeps_half_the_exponential_delay() -> None:
    for _ in range(200):
        assert timedelta(minutes=2.5) <= backoff(1, 5) <= timedelta(minutes=5)
        assert timedelta(minutes=10) <= backoff(3, 5) <= timedelta(minutes=20)


def test_a_same_day_quiet_window_ends_the_same_day() -> None:
    at_three = datetime(2027, 3, 13, 3, 0, tzinfo=UTC)
    allowed = next_allowed(at_three, ZoneInfo("Africa/Abidjan"), (time(0, 0), time(6, 0)))
    assert allowed == datetime(2027, 3, 13, 6, 0, tzinfo=UTC)
