"""IANA time zones: the one check of a zone's name, for settings, clinic events and the demo register."""

from __future__ import annotations

import zoneinfo


def known_zone(name: str) -> str:
    """`name` if it is an IANA time zone; else ValueError naming it. A folder of the zone database ("Africa") is not
    a zone: `ZoneInfo` raises an OSError for it, which would otherwise escape as a crash rather than a refusal."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown IANA time zone {name!r}") from exc
    return name
