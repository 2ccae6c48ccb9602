"""The one source of "now" for all core code.

Lambda runs on the system clock. The embedded runtime (rappel simulate, make run, bench) installs a
virtual clock so that weeks pass in seconds; every rule that depends on time reads it from here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What core code may ask of time."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait (really, or virtually) for `seconds`."""
        ...


class SystemClock:
    """The wall clock, used in Lambda and by `rappel` against a deployed stack."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """A clock that only moves when told to: `sleep` and `advance_to` move it, nothing else does."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("VirtualClock start must be timezone-aware")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._now += timedelta(seconds=seconds)

    def advance_to(self, instant: datetime) -> None:
        """Move forward to `instant`; never backwards."""
        if instant > self._now:
            self._now = instant.astimezone(UTC)

    def set(self, instant: datetime) -> None:
        """Place the clock at `instant` (used to run concurrent senders side by side in virtual time)."""
        self._now = instant.astimezone(UTC)


_clock: Clock = SystemClock()


def now() -> datetime:
    """The current instant according to the installed clock."""
    return _clock.now()


def sleep(seconds: float) -> None:
    """Sleep on the installed clock."""
    _clock.sleep(seconds)


def install(clock: Clock) -> Clock:
    """Install `clock` as the source of time; returns the previous one so callers can restore it."""
    global _clock
    previous = _clock
    _clock = clock
    return previous


def current() -> Clock:
    """The installed clock."""
    return _clock


class _Installed:
    """A Clock that always asks the installed clock (for objects built before a virtual clock is installed)."""

    def now(self) -> datetime:
        return _clock.now()

    def sleep(self, seconds: float) -> None:
        _clock.sleep(seconds)


INSTALLED: Clock = _Installed()
