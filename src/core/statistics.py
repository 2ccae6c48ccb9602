"""Statistics per reminder type over the last hour, day or week, read from the counters (never from scans).

The counters (`core.counters`) are kept per UTC hour, so a window is read at hour granularity: every hour
bucket that overlaps (now - window, now], i.e. the bucket of `now` and those before it back to the one holding
the window's start. The report may therefore include up to one hour more than the window, never less.
Pending is a live figure (the sparse `due` index), since a counter cannot say what is still waiting: the reminders
due within `PENDING_HORIZON`, not every one planned up to three years ahead, so that reading it stays bounded by a
day's sends however many children are registered. A claimed reminder is on the send queue for seconds, out of the
index, and the health check gives that queue's depth.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, Literal, get_args
from zoneinfo import ZoneInfo

from core import clock, store
from core.counters import BOUNDS, PLANNED, RETRIED, SENT_VIA, SMS, UNDELIVERED, percentile_from_histogram
from core.lifecycle import Status
from core.observability import logger
from core.outcomes import outcome_rows, outcome_summary
from core.settings import Settings
from core.timing import ReminderType

Window = Literal["hour", "day", "week"]
WINDOWS: Final[tuple[str, ...]] = get_args(Window)
WINDOW_HOURS: Final[dict[str, int]] = {"hour": 1, "day": 24, "week": 7 * 24}
P95: Final[float] = 0.95
# How far ahead "pending" looks: a day holds every reminder the next send hours will take.
PENDING_HORIZON: Final[timedelta] = timedelta(hours=24)

REPORT_PK: Final[str] = "REPORT#daily"

# Counter names that are plain counts, and the report field each one feeds.
COUNT_FIELDS: Final[dict[str, str]] = {
    PLANNED: "planned",
    Status.SENT.value: "sent",
    SMS: "sms_sent",
    Status.DELIVERED.value: "delivered",
    Status.FAILED.value: "failed",
    Status.DEAD_LETTER.value: "dead_lettered",
    Status.EXPIRED.value: "expired",
    Status.CANCELLED.value: "cancelled",
    RETRIED: "retried",
}


# ---------------------------------------------------------------------------------------------- pure arithmetic


def hour_buckets(
    since: Window, now: datetime, start: datetime | None = None, end: datetime | None = None
) -> list[tuple[str, str]]:
    """The (UTC day, hour) counter buckets of a window, oldest first.

    Without `start`: those overlapping (now - window, now]. With `start` and `end`, a local day (which daylight
    saving time makes 23 or 25 hours long): the hours that end in (start, end], up to the one under way at `now`.
    Each hour is counted in one day's report, the one it ends in, whole: in a half-hour zone the hour that
    straddles midnight goes to the day after, whose report is made once it has ended."""
    if since not in WINDOW_HOURS:
        raise ValueError(f"since must be one of {', '.join(WINDOWS)}, got {since!r}")
    hour = timedelta(hours=1)
    if start is None:
        first = _hour_of(now - timedelta(hours=WINDOW_HOURS[since]))
        stop = _hour_of(now) + hour
    else:
        first = _hour_of(start)
        stop = _hour_of(now) + hour
        if end is not None:  # no hour that ends after the day: the next day counts it
            stop = min(stop, end - hour + timedelta(microseconds=1))
    buckets = []
    while first < stop:
        buckets.append((first.strftime("%Y-%m-%d"), first.strftime("%H")))
        first += hour
    return buckets


def _hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def sum_counters(
    counters_by_day: Mapping[str, Mapping[str, float]], buckets: Iterable[tuple[str, str]]
) -> dict[str, dict[str, float]]:
    """Counter values summed over `buckets`, by reminder type then counter name.

    `counters_by_day` maps a UTC day to its counters keyed as stored (`<HH>#<reminder type>#<name>`).
    """
    wanted: dict[str, set[str]] = {}
    for day, hour in buckets:
        wanted.setdefault(day, set()).add(hour)
    out: dict[str, dict[str, float]] = {}
    for day, hours in wanted.items():
        for key, value in counters_by_day.get(day, {}).items():
            parts = key.split("#", 2)
            if len(parts) != 3 or parts[0] not in hours:
                continue
            _, reminder_type, name = parts
            names = out.setdefault(reminder_type, {})
            names[name] = names.get(name, 0.0) + value
    return out


def merge(groups: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Counter maps added name by name (totals across reminder types)."""
    out: dict[str, float] = {}
    for group in groups:
        for name, value in group.items():
            out[name] = out.get(name, 0.0) + value
    return out


def histogram(counters: Mapping[str, float], prefix: str) -> dict[str, float]:
    """The `<prefix>_le_<bound>` counters as {bound label: count}."""
    head = f"{prefix}_le_"
    return {name[len(head) :]: value for name, value in counters.items() if name.startswith(head)}


def average(total: float, count: float) -> float | None:
    """`total / count`, or None when there is nothing to average."""
    return total / count if count > 0 else None


def delivery_rate(delivered: float, undelivered: float) -> float | None:
    """Delivered out of the SMS whose fate the provider reported (delivered + reported undeliverable); None without
    any. A reminder that failed before any SMS went out (a number the provider refused) had no fate to report."""
    settled = delivered + undelivered
    return delivered / settled if settled > 0 else None


def _whole(value: float) -> int:
    # Counters are stored as DynamoDB numbers (read back as floats); counts are whole.
    return round(value)


def _share(value: float) -> float:
    """SMS counted by reminder type: each reminder adds its share of the SMS that carried it, so one SMS for two
    types is half of one for each (in total, whole). To a tenth; a whole number as one."""
    tenths = round(value, 1)
    return int(tenths) if tenths.is_integer() else tenths


@dataclass(frozen=True)
class Figures:
    """The statistics of one reminder type (or of all of them) over a window."""

    planned: int = 0
    sent: int = 0  # reminders sent
    # SMS the provider accepted (one may carry several reminders for one phone); by type, that type's share of them
    sms_sent: float = 0
    delivered: int = 0
    failed: int = 0
    dead_lettered: int = 0
    expired: int = 0
    cancelled: int = 0
    retried: int = 0
    pending: int = 0
    delivery_rate: float | None = None
    delivery_time_avg_seconds: float | None = None
    delivery_time_p95_seconds: float | None = None
    lateness_avg_seconds: float | None = None
    lateness_p95_seconds: float | None = None
    sent_by_provider: Mapping[str, int] = field(default_factory=dict)  # reminders sent, by the provider that took them

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; a p95 beyond the last histogram bound (infinite) is written as the text '>259200'."""
        out: dict[str, Any] = {}
        for item in fields(self):
            name = item.name
            value = getattr(self, name)
            if isinstance(value, float) and math.isinf(value):
                value = f">{BOUNDS[-1]}"
            elif isinstance(value, float):
                value = round(value, 6)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        return out


def figures_from_counters(counters: Mapping[str, float], pending: int = 0) -> Figures:
    """The figures of one group of counters (`counters` by name) plus the live pending count."""
    counts = {field_name: _whole(counters.get(name, 0.0)) for name, field_name in COUNT_FIELDS.items() if name != SMS}
    # Averages divide by the histogram's total, the exact number of samples in the sum (a delivery whose send
    # time is unknown is counted as delivered but has no latency).
    delivery, lateness = histogram(counters, "delivery"), histogram(counters, "lateness")
    return Figures(
        **counts,
        sms_sent=_share(counters.get(SMS, 0.0)),
        pending=pending,
        delivery_rate=delivery_rate(counts["delivered"], _whole(counters.get(UNDELIVERED, 0.0))),
        delivery_time_avg_seconds=average(counters.get("delivery_sum", 0.0), sum(delivery.values())),
        delivery_time_p95_seconds=percentile_from_histogram(delivery, P95),
        lateness_avg_seconds=average(counters.get("lateness_sum", 0.0), sum(lateness.values())),
        lateness_p95_seconds=percentile_from_histogram(lateness, P95),
        sent_by_provider={
            name.removeprefix(SENT_VIA): _whole(value)
            for name, value in sorted(counters.items())
            if name.startswith(SENT_VIA) and _whole(value)
        },
    )


@dataclass(frozen=True)
class StatisticsReport:
    """Statistics over a window: per reminder type and in total."""

    since: Window
    window_start: datetime
    window_end: datetime
    first_hour: datetime
    by_type: Mapping[str, Figures]
    total: Figures
    notes: tuple[str, ...] = field(default=())
    # Did the reminders work (`core.outcomes`): cumulative, not over the window; None when not read.
    outcomes: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (times as UTC ISO-8601)."""
        return {
            "since": self.since,
            "window_start": store.iso(self.window_start),
            "window_end": store.iso(self.window_end),
            "counted_from": store.iso(self.first_hour),
            "by_type": {name: figures.as_dict() for name, figures in self.by_type.items()},
            "total": self.total.as_dict(),
            "notes": list(self.notes),
            **({"outcomes": dict(self.outcomes)} if self.outcomes is not None else {}),
        }


def build_report(
    since: Window,
    now: datetime,
    counters_by_day: Mapping[str, Mapping[str, float]],
    pending: Mapping[str, int],
    start: datetime | None = None,
    end: datetime | None = None,
) -> StatisticsReport:
    """The report from raw counters and the live pending counts by reminder type (no I/O); `start` and `end`: as
    for `hour_buckets`."""
    buckets = hour_buckets(since, now, start, end)
    grouped = sum_counters(counters_by_day, buckets)
    types = [t.value for t in ReminderType] + sorted((set(grouped) | set(pending)) - {t.value for t in ReminderType})
    by_type = {t: figures_from_counters(grouped.get(t, {}), pending.get(t, 0)) for t in types}
    window_start = start if start is not None else now - timedelta(hours=WINDOW_HOURS[since])
    horizon_hours = PENDING_HORIZON / timedelta(hours=1)
    first_hour = datetime.fromisoformat(f"{buckets[0][0]}T{buckets[0][1]}:00:00+00:00") if buckets else window_start
    return StatisticsReport(
        since=since,
        window_start=window_start,
        window_end=now,
        first_hour=first_hour,
        by_type=by_type,
        total=figures_from_counters(merge(grouped.values()), sum(pending.values())),
        notes=(
            "counts are per hour bucket (UTC): counted_from may be up to an hour from window_start",
            f"pending is a live count at window_end of the reminders due within {horizon_hours:g} hours after it, not a"
            " count over the window",
            f"p95 values are histogram bucket upper bounds; '>{BOUNDS[-1]}' means beyond the last bound",
        ),
    )


# ---------------------------------------------------------------------------------------------- with storage


def statistics(
    since: Window,
    settings: Settings,
    now: datetime,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    by_clinic: bool = True,
) -> StatisticsReport:
    """Statistics over the last hour, day or week ending at `now` (a local day from `start` to `end`, when given),
    from the counters and the live `due` index; the outcomes per clinic too unless `by_clinic` is False."""
    store.bind(settings)
    buckets = hour_buckets(since, now, start, end)
    counters_by_day = {day: store.read_counters(day) for day in dict.fromkeys(day for day, _ in buckets)}
    pending = store.count_pending(settings.DUE_INDEX_SHARDS, now + PENDING_HORIZON)
    return replace(build_report(since, now, counters_by_day, pending, start, end), outcomes=outcome_figures(by_clinic))


def local_day_start(day: str, zone: str) -> datetime:
    """The instant (UTC) the local `day` begins in `zone`: a day's report counts from there, so a day of 23 or 25
    hours (daylight saving time) is counted whole, once."""
    return datetime.combine(date.fromisoformat(day), time(0), ZoneInfo(zone)).astimezone(UTC)


def outcome_figures(by_clinic: bool = True) -> dict[str, Any]:
    """The outcome counters (one Query): the reached and not reached groups in total, then (`by_clinic`) per clinic
    and reminder type. Cumulative since the counters began, by the doses' due dates, whatever the report's window."""
    rows = outcome_rows(store.read_outcome_counts())
    if not by_clinic:
        return outcome_summary(rows)
    return {
        **outcome_summary(rows),
        "by_clinic": [
            {"clinic": r.clinic, "group": r.group, "reminder_type": r.reminder_type, **r.figures} for r in rows
        ],
    }


def store_daily_report(report: StatisticsReport, day: str, settings: Settings) -> None:
    """Keep a report in the ops table (pk REPORT#daily, sk the local day it covers), replacing any earlier one."""
    store.bind(settings)
    store.put_ops_value(REPORT_PK, day, text=json.dumps(report.as_dict(), separators=(",", ":"), sort_keys=True))


def load_daily_report(day: str, settings: Settings) -> dict[str, Any] | None:
    """A stored daily report as its JSON data, or None."""
    store.bind(settings)
    item = store.get_ops_value(REPORT_PK, day)
    if item is None or not item.text:
        return None
    data: dict[str, Any] = json.loads(item.text)
    return data


def report_day(now: datetime, settings: Settings) -> str:
    """The APP_TIMEZONE day holding the middle of the day window ending at `now` (run at 04:00: the day before).

    The middle rather than the end, so that a run a few seconds late, or an operator's run at 09:00, still
    names the day the window mostly covers.
    """
    return (
        (now - timedelta(hours=WINDOW_HOURS["day"] / 2)).astimezone(ZoneInfo(settings.APP_TIMEZONE)).date().isoformat()
    )


def daily_statistics(settings: Settings) -> StatisticsReport:
    """The daily run: the day's statistics, stored under the local day it covers and logged."""
    now = clock.now()
    day = report_day(now, settings)
    # From the local day's midnight to the next: the run after it counts the day whole, whatever its length, and no
    # hour of the next day (a run made early counts up to its own time, under the same day).
    start = local_day_start(day, settings.APP_TIMEZONE)
    end = local_day_start((date.fromisoformat(day) + timedelta(days=1)).isoformat(), settings.APP_TIMEZONE)
    # The outcomes in total only: per clinic they grow with every clinic name ever counted, past the report's one
    # item (400 KB) and log event (256 KB) in a few years; `rappel stats --outcomes` reads them live.
    report = statistics("day", settings, now, start=start, end=end, by_clinic=False)
    store_daily_report(report, day, settings)
    logger.info("daily statistics", extra={"report_day": day, "report": report.as_dict()})
    return report
