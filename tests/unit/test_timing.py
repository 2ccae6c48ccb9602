"""Timing rules: local wall time per zone, DST gaps and folds, quiet hours, deadlines."""

import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from core.settings import build_settings
from core.timing import (
    ReminderType,
    in_quiet_hours,
    local_to_utc,
    plan_reminders,
    quiet_hours_begin,
    reminder_rules,
)

pytestmark = pytest.mark.unit

SETTINGS = build_settings()
ZONES = sorted(zoneinfo.available_timezones() - {"Factory", "localtime"})


def _planned(due: date, zone: str, preferred_hour: int | None = None, settings=SETTINGS):
    return {p.reminder_type: p for p in plan_reminders(due, ZoneInfo(zone), preferred_hour, settings)}


def _exists(day: date, wall: time, zone: ZoneInfo) -> bool:
    aware = datetime.combine(day, wall).replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == datetime.combine(day, wall)


@hyp_settings(max_examples=400, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    due=st.dates(min_value=date(2023, 12, 1), max_value=date(2029, 12, 31)),
)
def test_every_zone_and_date_lands_on_the_configured_local_hour(zone_name: str, due: date) -> None:
    zone = ZoneInfo(zone_name)
    planned = _planned(due, zone_name)
    due_start = local_to_utc(due, time(0, 0), zone)
    for rule in reminder_rules(SETTINGS):
        reminder = planned.get(rule.reminder_type)
        if reminder is None:
            continue
        local = reminder.scheduled_at.astimezone(zone)
        send_day = due + timedelta(days=rule.offset_days)
        if _exists(send_day, rule.local_time, zone):
            assert (local.date(), local.time().replace(tzinfo=None)) == (send_day, rule.local_time)
        else:  # DST gap: shifted forward by the gap, so later than asked and within a few hours
            assert rule.local_time < local.time().replace(tzinfo=None) <= time(rule.local_time.hour + 3, 59)
        assert not in_quiet_hours(reminder.scheduled_at, zone, SETTINGS.quiet_hours)
        assert reminder.deadline > reminder.scheduled_at
        if rule.reminder_type.before_due:
            assert reminder.deadline <= due_start
            assert reminder.scheduled_at < due_start
        else:
            assert reminder.scheduled_at >= due_start


def test_defaults_are_the_specs_days_and_hours() -> None:
    planned = _planned(date(2027, 3, 20), "Africa/Abidjan")
    assert planned[ReminderType.SEVEN_DAY].scheduled_at == datetime(2027, 3, 13, 9, 0, tzinfo=UTC)
    assert planned[ReminderType.ONE_DAY].scheduled_at == datetime(2027, 3, 19, 9, 0, tzinfo=UTC)
    assert planned[ReminderType.OVERDUE].scheduled_at == datetime(2027, 3, 21, 14, 0, tzinfo=UTC)
    assert planned[ReminderType.SEVEN_DAY].deadline == datetime(2027, 3, 15, 9, 0, tzinfo=UTC)  # 48 h
    assert planned[ReminderType.ONE_DAY].deadline == datetime(2027, 3, 19, 19, 0, tzinfo=UTC)  # 10 h
    assert planned[ReminderType.OVERDUE].deadline == datetime(2027, 3, 24, 14, 0, tzinfo=UTC)  # 72 h


def test_one_day_deadline_never_reaches_the_due_date() -> None:
    settings = build_settings(REMINDER_1_DAY_MAX_LATENESS_HOURS=72)
    planned = _planned(date(2027, 3, 20), "Africa/Abidjan", settings=settings)
    assert planned[ReminderType.ONE_DAY].deadline == datetime(2027, 3, 20, 0, 0, tzinfo=UTC)


def test_dst_gap_in_paris_moves_forward() -> None:
    # 2027-03-28 02:00 -> 03:00 in Paris; a 02:30 send time does not exist there.
    settings = build_settings(REMINDER_1_DAY_TIME="02:30", SMS_QUIET_HOURS_ENABLED=False)
    planned = _planned(date(2027, 3, 29), "Europe/Paris", settings=settings)
    local = planned[ReminderType.ONE_DAY].scheduled_at.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.date(), local.hour, local.minute) == (date(2027, 3, 28), 3, 30)


def test_dst_gap_at_midnight_in_santiago() -> None:
    # Chile springs forward at 24:00 -> 01:00 (first Sunday of September): 00:30 does not exist on 2027-09-05.
    settings = build_settings(REMINDER_1_DAY_TIME="00:30", SMS_QUIET_HOURS_ENABLED=False)
    planned = _planned(date(2027, 9, 6), "America/Santiago", settings=settings)
    local = planned[ReminderType.ONE_DAY].scheduled_at.astimezone(ZoneInfo("America/Santiago"))
    assert (local.date(), local.hour, local.minute) == (date(2027, 9, 5), 1, 30)


def test_fold_takes_the_first_occurrence() -> None:
    # 2027-10-31 03:00 -> 02:00 in Paris: 02:30 happens twice; the first is at +02:00.
    settings = build_settings(REMINDER_1_DAY_TIME="02:30", SMS_QUIET_HOURS_ENABLED=False)
    planned = _planned(date(2027, 11, 1), "Europe/Paris", settings=settings)
    assert planned[ReminderType.ONE_DAY].scheduled_at == datetime(2027, 10, 31, 0, 30, tzinfo=UTC)


def test_st_johns_is_three_and_a_half_hours_behind_in_winter() -> None:
    planned = _planned(date(2027, 1, 20), "America/St_Johns")
    assert planned[ReminderType.SEVEN_DAY].scheduled_at == datetime(2027, 1, 13, 12, 30, tzinfo=UTC)


def test_kiritimati_is_fourteen_hours_ahead() -> None:
    planned = _planned(date(2027, 1, 20), "Pacific/Kiritimati")
    assert planned[ReminderType.SEVEN_DAY].scheduled_at == datetime(2027, 1, 12, 19, 0, tzinfo=UTC)


def test_leap_day_and_year_end() -> None:
    leap = _planned(date(2028, 3, 1), "Africa/Abidjan")
    assert leap[ReminderType.ONE_DAY].scheduled_at.date() == date(2028, 2, 29)
    year_end = _planned(date(2028, 1, 3), "Africa/Abidjan")
    assert year_end[ReminderType.SEVEN_DAY].scheduled_at.date() == date(2027, 12, 27)
    assert year_end[ReminderType.ONE_DAY].scheduled_at.date() == date(2028, 1, 2)
    new_year = _planned(date(2027, 12, 31), "Africa/Abidjan")
    assert new_year[ReminderType.OVERDUE].scheduled_at.date() == date(2028, 1, 1)


def test_preferred_hour_replaces_the_default_hour() -> None:
    planned = _planned(date(2027, 3, 20), "Africa/Abidjan", preferred_hour=17)
    assert planned[ReminderType.SEVEN_DAY].scheduled_at.hour == 17
    assert planned[ReminderType.OVERDUE].scheduled_at.hour == 17


def test_quiet_hours_keep_a_preference_on_its_day() -> None:
    late = _planned(date(2027, 3, 20), "Africa/Abidjan", preferred_hour=22)
    assert late[ReminderType.SEVEN_DAY].scheduled_at == datetime(2027, 3, 13, 19, 0, tzinfo=UTC)
    early = _planned(date(2027, 3, 20), "Africa/Abidjan", preferred_hour=5)
    assert early[ReminderType.SEVEN_DAY].scheduled_at == datetime(2027, 3, 13, 8, 0, tzinfo=UTC)


def test_a_quiet_window_after_midnight_moves_an_early_preference_to_its_end_the_same_day() -> None:
    settings = build_settings(SMS_QUIET_HOURS_START="00:00", SMS_QUIET_HOURS_END="06:00")
    planned = _planned(date(2027, 3, 20), "Africa/Abidjan", preferred_hour=5, settings=settings)
    assert planned[ReminderType.SEVEN_DAY].scheduled_at == datetime(2027, 3, 13, 6, 0, tzinfo=UTC)
    assert planned[ReminderType.ONE_DAY].scheduled_at == datetime(2027, 3, 19, 6, 0, tzinfo=UTC)


def test_quiet_hours_can_be_turned_off() -> None:
    settings = build_settings(SMS_QUIET_HOURS_ENABLED=False)
    planned = _planned(date(2027, 3, 20), "Africa/Abidjan", preferred_hour=22, settings=settings)
    assert planned[ReminderType.SEVEN_DAY].scheduled_at == datetime(2027, 3, 13, 22, 0, tzinfo=UTC)


def test_a_late_evening_preference_keeps_the_one_day_reminder_the_day_before() -> None:
    planned = _planned(date(2027, 3, 20), "Africa/Abidjan", preferred_hour=23)
    assert planned[ReminderType.ONE_DAY].scheduled_at == datetime(2027, 3, 19, 19, 0, tzinfo=UTC)
    assert planned[ReminderType.OVERDUE].scheduled_at == datetime(2027, 3, 21, 19, 0, tzinfo=UTC)


def test_each_reminder_carries_the_deadline_planning_creates_it_by() -> None:
    """`planning.decide` creates none whose deadline has passed (tests/unit/test_reconcile_decisions.py)."""
    planned = _planned(date(2027, 3, 20), "Africa/Abidjan")
    assert planned[ReminderType.SEVEN_DAY].deadline == datetime(2027, 3, 15, 9, 0, tzinfo=UTC)  # 48 h
    assert planned[ReminderType.ONE_DAY].deadline == datetime(2027, 3, 19, 19, 0, tzinfo=UTC)  # 10 h
    assert planned[ReminderType.OVERDUE].deadline == datetime(2027, 3, 24, 14, 0, tzinfo=UTC)  # 72 h


def test_invalid_setting_names_the_variable() -> None:
    from core.settings import ConfigurationError

    with pytest.raises(ConfigurationError, match="REMINDER_7_DAY_TIME"):
        build_settings(REMINDER_7_DAY_TIME="9h")
    with pytest.raises(ConfigurationError, match="APP_TIMEZONE"):
        build_settings(APP_TIMEZONE="Mars/Olympus")
    with pytest.raises(ConfigurationError, match="SMS_RATE_LIMIT_PER_SECOND"):
        build_settings(SMS_RATE_LIMIT_PER_SECOND=0)


def test_later_reminders_due_within_a_gap_of_a_late_reminder() -> None:
    from core.timing import later_reminders_due_within

    settings = build_settings()
    zone = ZoneInfo("Africa/Abidjan")
    due = date(2027, 3, 12)
    one_day = datetime(2027, 3, 11, 9, 0, tzinfo=UTC)
    args = (ReminderType.SEVEN_DAY, due, zone, None, settings)
    gap = timedelta(hours=settings.SMS_MIN_GAP_HOURS)
    assert later_reminders_due_within(*args, now=one_day - gap) == []  # the 1-day is at the gap's end, not before it
    assert later_reminders_due_within(*args, now=one_day - gap + timedelta(seconds=1)) == [ReminderType.ONE_DAY]
    overdue = (ReminderType.OVERDUE, due, zone, None, settings)
    assert later_reminders_due_within(*overdue, now=one_day + timedelta(days=9)) == []


def test_only_lateness_brings_a_reminder_within_the_gap_of_the_next() -> None:
    """Planned closer than the gap (1-day 09:00 the day before, overdue 14:00 the day after: 53 h; a gap of 60 h), the
    next reminder does not supersede one going out on time."""
    from core.timing import later_reminders_due_within

    settings = build_settings(SMS_MIN_GAP_HOURS=60)
    zone = ZoneInfo("Africa/Abidjan")
    on_time = datetime(2027, 3, 11, 9, 0, tzinfo=UTC)
    args = (ReminderType.ONE_DAY, date(2027, 3, 12), zone, None, settings)
    assert later_reminders_due_within(*args, now=on_time) == []
    assert later_reminders_due_within(*args, now=on_time + timedelta(hours=10)) == []
    seven_day_args = (ReminderType.SEVEN_DAY, date(2027, 3, 12), zone, None, settings)
    late = datetime(2027, 3, 9, 9, 0, tzinfo=UTC)  # four days late: 48 h before the 1-day reminder
    assert later_reminders_due_within(*seven_day_args, now=late) == [ReminderType.ONE_DAY]


def test_a_gap_that_runs_to_midnight_keeps_each_reminder_on_its_day() -> None:
    """America/Nuuk springs forward at 23:00 (to midnight) on the last Saturday of March: a 23:00 preference moved
    forward by the gap was Sunday 00:00, the due date's start, so the 1-day reminder was never planned."""
    no_quiet_hours = build_settings(SMS_QUIET_HOURS_ENABLED=False)
    nuuk = ZoneInfo("America/Nuuk")
    planned = {p.reminder_type: p for p in plan_reminders(date(2027, 3, 28), nuuk, 23, no_quiet_hours)}
    one_day = planned[ReminderType.ONE_DAY].scheduled_at.astimezone(nuuk)
    assert one_day.date() == date(2027, 3, 27) and one_day.hour == 22, one_day


@hyp_settings(max_examples=300, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    instant=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2029, 12, 31), timezones=st.just(UTC)),
    quiet=st.sampled_from([(time(20, 0), time(8, 0)), (time(12, 0), time(14, 0)), (time(0, 0), time(6, 0))]),
)
def test_quiet_hours_begin_at_the_first_quiet_instant_from_now(zone_name: str, instant: datetime, quiet) -> None:
    """What bounds a gateway's hold on an SMS (Kannel's validity): inside quiet hours, at once; else their next
    start, with no quiet minute before it."""
    zone = ZoneInfo(zone_name)
    begins = quiet_hours_begin(instant, zone, quiet)
    assert begins is not None and instant <= begins <= instant + timedelta(hours=26)
    assert in_quiet_hours(begins, zone, quiet)
    step = timedelta(minutes=15)
    assert not any(in_quiet_hours(begins - k * step, zone, quiet) for k in range(1, 8) if begins - k * step >= instant)


def test_no_quiet_hours_no_bound() -> None:
    assert quiet_hours_begin(datetime(2027, 3, 13, 9, 0, tzinfo=UTC), ZoneInfo("Africa/Abidjan"), None) is None
