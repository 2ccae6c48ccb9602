"""When each reminder goes out, and until when it may still go out. Pure functions, no I/O.

Local wall time in the patient's zone is converted with zoneinfo: a wall time that does not exist (DST gap)
is shifted forward by the length of the gap, an ambiguous one (DST fold) takes its first occurrence.
Quiet hours push a send time to the first allowed minute after them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo

from core.settings import Settings, parse_hhmm


class ReminderType(StrEnum):
    """The three reminders of a dose, with the spec's names."""

    SEVEN_DAY = "7_day_reminder"
    ONE_DAY = "1_day_reminder"
    OVERDUE = "overdue_reminder"

    @property
    def before_due(self) -> bool:
        """Pre-due reminders must never go out on or after the due date."""
        return self is not ReminderType.OVERDUE

    @property
    def urgency(self) -> int:
        """Lower is more urgent: when the dispatcher must choose, 1-day and overdue go before 7-day."""
        return {ReminderType.ONE_DAY: 0, ReminderType.OVERDUE: 1, ReminderType.SEVEN_DAY: 2}[self]


_BEFORE_DUE: Final[frozenset[str]] = frozenset(t.value for t in ReminderType if t.before_due)


@dataclass(frozen=True)
class ReminderRule:
    """One reminder type's timing: days from the due date, local time of day, allowed lateness."""

    reminder_type: ReminderType
    offset_days: int
    local_time: time
    max_lateness: timedelta


@dataclass(frozen=True)
class PlannedReminder:
    """A reminder to create: when to send it (UTC) and the last instant it may still be sent (UTC)."""

    reminder_type: ReminderType
    scheduled_at: datetime
    deadline: datetime


def reminder_rules(settings: Settings) -> tuple[ReminderRule, ...]:
    """The configured timing of the three reminder types."""
    return (
        ReminderRule(
            ReminderType.SEVEN_DAY,
            settings.REMINDER_7_DAY_OFFSET_DAYS,
            parse_hhmm(settings.REMINDER_7_DAY_TIME),
            timedelta(hours=settings.REMINDER_7_DAY_MAX_LATENESS_HOURS),
        ),
        ReminderRule(
            ReminderType.ONE_DAY,
            settings.REMINDER_1_DAY_OFFSET_DAYS,
            parse_hhmm(settings.REMINDER_1_DAY_TIME),
            timedelta(hours=settings.REMINDER_1_DAY_MAX_LATENESS_HOURS),
        ),
        ReminderRule(
            ReminderType.OVERDUE,
            settings.REMINDER_OVERDUE_OFFSET_DAYS,
            parse_hhmm(settings.REMINDER_OVERDUE_TIME),
            timedelta(hours=settings.REMINDER_OVERDUE_MAX_LATENESS_HOURS),
        ),
    )


def local_to_utc(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of local wall time `wall` on `day` in `zone` (gap: shifted forward; fold: first)."""
    return datetime.combine(day, wall).replace(tzinfo=zone, fold=0).astimezone(UTC)


def _in_quiet_hours(wall: time, quiet: tuple[time, time]) -> bool:
    start, end = quiet
    if start < end:
        return start <= wall < end
    return wall >= start or wall < end


def next_allowed(instant: datetime, zone: ZoneInfo, quiet: tuple[time, time] | None) -> datetime:
    """`instant` itself if it is outside quiet hours in `zone`, else the first allowed minute after them."""
    if quiet is None:
        return instant
    local = instant.astimezone(zone)
    if not _in_quiet_hours(local.time().replace(tzinfo=None), quiet):
        return instant
    start, end = quiet
    end_day = local.date()
    # Overnight window and we are in its evening part: it ends tomorrow morning.
    if start > end and local.time().replace(tzinfo=None) >= start:
        end_day += timedelta(days=1)
    allowed = local_to_utc(end_day, end, zone)
    return max(allowed, instant)


def in_quiet_hours(instant: datetime, zone: ZoneInfo, quiet: tuple[time, time] | None) -> bool:
    """Whether `instant` falls inside quiet hours in `zone`."""
    return next_allowed(instant, zone, quiet) != instant


def quiet_hours_begin(instant: datetime, zone: ZoneInfo, quiet: tuple[time, time] | None) -> datetime | None:
    """The first instant from `instant` on that falls inside quiet hours in `zone` (`instant` itself when inside
    them); None without quiet hours."""
    if quiet is None:
        return None
    if in_quiet_hours(instant, zone, quiet):
        return instant
    local = instant.astimezone(zone)
    day = local.date() if local.time().replace(tzinfo=None) < quiet[0] else local.date() + timedelta(days=1)
    return local_to_utc(day, quiet[0], zone)


def send_time(
    rule: ReminderRule, due: date, zone: ZoneInfo, preferred_hour: int | None, settings: Settings
) -> datetime:
    """When the reminder of `rule` for a dose due on `due` should go out, in UTC.

    Always on the rule's day: a wall time inside quiet hours moves to their end when that is the same day (an
    early preference), else to one hour before they start (an evening one). Pushing an evening time to the next
    morning would land a 1-day reminder on the due date itself, and move the others a day.
    """
    wall = rule.local_time if preferred_hour is None else rule.local_time.replace(hour=preferred_hour)
    day = due + timedelta(days=rule.offset_days)
    quiet = settings.quiet_hours
    at = local_to_utc(day, wall, zone)
    if at.astimezone(zone).date() != day:
        # A gap that runs to midnight (Nuuk springs forward at 23:00): moved forward, the time would leave its day
        # (a 1-day reminder on the due date is never sent); the instant just before the gap instead.
        at = datetime.combine(day, wall).replace(tzinfo=zone, fold=1).astimezone(UTC)
    allowed = next_allowed(at, zone, quiet)
    if quiet is None or allowed.astimezone(zone).date() == day:
        return allowed
    before_quiet = datetime.combine(day, quiet[0]) - timedelta(hours=1)
    return local_to_utc(before_quiet.date(), before_quiet.time(), zone)


def deadline_for(rule: ReminderRule, scheduled_at: datetime, due: date, zone: ZoneInfo) -> datetime:
    """The last instant the reminder may go out: send time + max lateness, and before the due date if pre-due."""
    deadline = scheduled_at + rule.max_lateness
    due_starts = due_date_starts(rule.reminder_type.value, due, zone)
    return min(deadline, due_starts) if due_starts is not None else deadline


def due_date_starts(reminder_type: str, due: date, zone: ZoneInfo) -> datetime | None:
    """For a reminder that must go out before its due date, when that date starts in `zone`; None for any other
    (the overdue reminder, a reply's confirmation)."""
    if reminder_type not in _BEFORE_DUE:
        return None
    return local_to_utc(due, time(0, 0), zone)


def plan_reminders(
    due: date,
    zone: ZoneInfo,
    preferred_hour: int | None,
    settings: Settings,
) -> list[PlannedReminder]:
    """The reminders of a dose due on `due`, each with its schedule and deadline (one whose deadline has passed is
    still listed: planning creates none such, and does not take it for a reminder no longer wanted)."""
    planned = []
    for rule in reminder_rules(settings):
        scheduled_at = send_time(rule, due, zone, preferred_hour, settings)
        deadline = deadline_for(rule, scheduled_at, due, zone)
        if deadline <= scheduled_at:
            continue
        planned.append(PlannedReminder(rule.reminder_type, scheduled_at, deadline))
    return planned


def rule_for(reminder_type: ReminderType, settings: Settings) -> ReminderRule:
    """The timing rule of one reminder type."""
    return next(rule for rule in reminder_rules(settings) if rule.reminder_type is reminder_type)


def later_reminders_due_within(
    reminder_type: ReminderType,
    due: date,
    zone: ZoneInfo,
    preferred_hour: int | None,
    settings: Settings,
    *,
    now: datetime,
) -> list[ReminderType]:
    """The reminder types of the same dose that a late reminder going out now would reach the family shortly before
    (within SMS_MIN_GAP_HOURS): planned after it and before now + the gap, and at least the gap after its own planned
    time, so that only its lateness brings them close. A gap wider than the rules' own spacing (1-day and overdue
    are 53 h apart by default, the gap may be 72) never drops a reminder going out on time."""
    gap = timedelta(hours=settings.SMS_MIN_GAP_HOURS)
    own = send_time(rule_for(reminder_type, settings), due, zone, preferred_hour, settings)
    return [
        rule.reminder_type
        for rule in reminder_rules(settings)
        if own + gap <= send_time(rule, due, zone, preferred_hour, settings) < now + gap
    ]
