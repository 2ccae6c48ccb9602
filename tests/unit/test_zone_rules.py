"""The zone rules every time is computed with: the tzdata package pinned with the functions, not the machine's."""

from __future__ import annotations

import importlib.resources
import zoneinfo
from datetime import UTC, datetime

import pytest
import tzdata

import core  # noqa: F401 - what every function and command imports first

pytestmark = pytest.mark.unit


def _pinned(name: str) -> zoneinfo.ZoneInfo:
    with importlib.resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).open("rb") as f:
        return zoneinfo.ZoneInfo.from_file(f, key=name)


def test_zones_are_read_from_the_pinned_tzdata_package_only() -> None:
    """zoneinfo reads the system's database first and the tzdata package only when there is none: on a machine (or
    Lambda's Amazon Linux) whose database is older than the pin, Casablanca, Havana and Vancouver were an hour off
    from 2026 on, the sender's quiet-hours check with them."""
    assert zoneinfo.TZPATH == ()
    for name in ("Africa/Casablanca", "America/Havana", "America/Vancouver", "Africa/Abidjan"):
        for when in (datetime(2027, 1, 13, 12, tzinfo=UTC), datetime(2027, 7, 13, 12, tzinfo=UTC)):
            assert when.astimezone(zoneinfo.ZoneInfo(name)).utcoffset() == when.astimezone(_pinned(name)).utcoffset()
    assert tzdata.IANA_VERSION >= "2026"
