"""SMS_RETENTION_DAYS against the lateness windows: a finished reminder is never deleted before its deadline."""

from __future__ import annotations

import pytest

from core.settings import ConfigurationError, build_settings


def test_a_retention_shorter_than_the_longest_lateness_window_stops_start_up_naming_the_variable() -> None:
    """Deleted before its deadline, a delivered reminder would be planned again by the next event of its family,
    and sent a second time."""
    with pytest.raises(ConfigurationError, match="SMS_RETENTION_DAYS"):
        build_settings(SMS_RETENTION_DAYS="14")
    longest = build_settings(
        SMS_RETENTION_DAYS="15",
        REMINDER_7_DAY_MAX_LATENESS_HOURS=str(24 * 14),
        REMINDER_OVERDUE_MAX_LATENESS_HOURS=str(24 * 14),
    )
    assert longest.SMS_RETENTION_DAYS * 24 > longest.REMINDER_7_DAY_MAX_LATENESS_HOURS
