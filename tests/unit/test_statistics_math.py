"""The statistics arithmetic without AWS: hour buckets of a window, sums, averages, p95 from histograms, rates."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from core.counters import BOUNDS, bucket_label, percentile_from_histogram, transition_counts
from core.lifecycle import Status
from core.settings import build_settings
from core.statistics import (
    P95,
    average,
    build_report,
    delivery_rate,
    figures_from_counters,
    histogram,
    hour_buckets,
    local_day_start,
    merge,
    report_day,
    sum_counters,
)

pytestmark = pytest.mark.unit

T = datetime(2027, 3, 1, 10, 30, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- hour buckets


def test_an_hour_window_reads_the_bucket_of_now_and_the_one_holding_its_start() -> None:
    assert hour_buckets("hour", T) == [("2027-03-01", "09"), ("2027-03-01", "10")]


def test_a_window_ending_on_the_hour_still_covers_its_whole_length() -> None:
    assert hour_buckets("hour", datetime(2027, 3, 1, 10, 0, tzinfo=UTC)) == [("2027-03-01", "09"), ("2027-03-01", "10")]


def test_an_hour_window_across_midnight_spans_two_days() -> None:
    now = datetime(2027, 3, 2, 0, 20, tzinfo=UTC)
    assert hour_buckets("hour", now) == [("2027-03-01", "23"), ("2027-03-02", "00")]


def test_a_day_window_at_midnight_reads_the_whole_previous_day() -> None:
    buckets = hour_buckets("day", datetime(2027, 3, 2, 0, 0, tzinfo=UTC))
    assert len(buckets) == 25
    assert buckets[:24] == [("2027-03-01", f"{h:02d}") for h in range(24)]
    assert buckets[-1] == ("2027-03-02", "00")


def test_a_week_window_covers_eight_utc_days_across_a_month_end() -> None:
    buckets = hour_buckets("week", datetime(2027, 3, 3, 12, 15, tzinfo=UTC))
    assert len(buckets) == 7 * 24 + 1
    assert buckets[0] == ("2027-02-24", "12") and buckets[-1] == ("2027-03-03", "12")
    assert len({day for day, _ in buckets}) == 8
    assert len(set(buckets)) == len(buckets)


def test_buckets_are_utc_whatever_the_offset_of_now() -> None:
    abidjan_midnight_in_paris = datetime(2027, 3, 2, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    assert hour_buckets("hour", abidjan_midnight_in_paris) == [("2027-03-01", "23"), ("2027-03-02", "00")]


def test_an_unknown_window_is_refused() -> None:
    with pytest.raises(ValueError, match="hour, day, week"):
        hour_buckets("month", T)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- sums


def test_sum_counters_keeps_only_the_buckets_and_groups_by_type_and_name() -> None:
    counters = {
        "2027-03-01": {
            "09#1_day_reminder#sent": 2,
            "10#1_day_reminder#sent": 3,
            "08#1_day_reminder#sent": 100,  # before the window
            "10#7_day_reminder#delivered": 1,
            "malformed": 5,
        },
        "2027-02-28": {"09#1_day_reminder#sent": 50},  # another day, same hour
    }
    assert sum_counters(counters, hour_buckets("hour", T)) == {
        "1_day_reminder": {"sent": 5.0},
        "7_day_reminder": {"delivered": 1.0},
    }


def test_merge_adds_name_by_name() -> None:
    assert merge([{"sent": 1, "failed": 2}, {"sent": 3}, {}]) == {"sent": 4, "failed": 2}


def test_histogram_reads_the_le_counters_of_one_prefix() -> None:
    counters = {"delivery_le_10": 2, "delivery_le_inf": 1, "delivery_sum": 99, "lateness_le_10": 7}
    assert histogram(counters, "delivery") == {"10": 2, "inf": 1}


# ---------------------------------------------------------------------------------------------- averages and p95


def test_average_is_none_without_samples() -> None:
    assert average(0, 0) is None
    assert average(300, 3) == 100


def test_p95_of_an_empty_histogram_is_none() -> None:
    assert percentile_from_histogram({}, P95) is None
    assert percentile_from_histogram({"10": 0}, P95) is None


def test_p95_with_everything_in_one_bucket_is_that_bucket_bound() -> None:
    assert percentile_from_histogram({"60": 17}, P95) == 60.0


def test_p95_lands_on_the_bucket_where_the_95th_percent_falls() -> None:
    assert percentile_from_histogram({"10": 95, "600": 5}, P95) == 10.0
    assert percentile_from_histogram({"10": 94, "600": 6}, P95) == 600.0


def test_p95_in_the_open_bucket_is_infinite_and_reported_as_beyond_the_last_bound() -> None:
    assert percentile_from_histogram({"10": 1, "inf": 1}, P95) == math.inf
    figures = figures_from_counters({"delivered": 1, "delivery_sum": 400000, "delivery_le_inf": 1})
    assert figures.delivery_time_p95_seconds == math.inf
    assert figures.as_dict()["delivery_time_p95_seconds"] == f">{BOUNDS[-1]}"
    json.dumps(figures.as_dict(), allow_nan=False)


def test_bucket_labels_put_a_bound_in_its_own_bucket() -> None:
    assert bucket_label(0) == "1"
    assert bucket_label(60) == "60"
    assert bucket_label(61) == "120"
    assert bucket_label(BOUNDS[-1] + 1) == "inf"


# ---------------------------------------------------------------------------------------------- rates and figures


@pytest.mark.parametrize(("delivered", "undelivered", "rate"), [(0, 0, None), (9, 1, 0.9), (0, 3, 0.0), (5, 0, 1.0)])
def test_delivery_rate_is_delivered_over_delivered_and_undelivered(
    delivered: int, undelivered: int, rate: float | None
) -> None:
    assert delivery_rate(delivered, undelivered) == rate


def _counts_of(moves: list[tuple[Status, str, datetime, datetime, datetime | None]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for target, source, at, scheduled, sent_at in moves:
        # A move back to pending after a failed attempt carries attempts + 1 (a deferral would not).
        values = {"attempts": 2} if (target, source) == (Status.PENDING, "queued") else {}
        for (_, key), amount in transition_counts(
            "1_day_reminder", source, target, at, values, scheduled, sent_at
        ).items():
            name = key.split("#", 2)[2]
            out[name] = out.get(name, 0) + amount
    return out


def test_figures_from_the_counters_real_transitions_produce() -> None:
    scheduled = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
    sent1, sent2, sent3 = (scheduled + timedelta(seconds=s) for s in (30, 90, 4000))
    counters = _counts_of(
        [
            (Status.PENDING, "", scheduled, scheduled, None),
            (Status.SENT, "queued", sent1, scheduled, None),
            (Status.SENT, "queued", sent2, scheduled, None),
            (Status.SENT, "queued", sent3, scheduled, None),
            (Status.DELIVERED, "sent", sent1 + timedelta(seconds=5), scheduled, sent1),
            (Status.DELIVERED, "sent", sent2 + timedelta(seconds=15), scheduled, sent2),
            (Status.FAILED, "sent", sent3 + timedelta(seconds=100), scheduled, sent3),
            (Status.PENDING, "queued", sent3, scheduled, None),  # a retry
        ]
    )
    figures = figures_from_counters(counters, pending=4)
    assert (figures.planned, figures.sent, figures.delivered, figures.failed, figures.retried) == (1, 3, 2, 1, 1)
    assert figures.pending == 4
    assert figures.delivery_rate == pytest.approx(2 / 3)
    assert figures.delivery_time_avg_seconds == 10.0
    assert figures.delivery_time_p95_seconds == 20.0  # 5 s -> bucket 5, 15 s -> bucket 20
    assert figures.lateness_avg_seconds == pytest.approx((30 + 90 + 4000) / 3)
    assert figures.lateness_p95_seconds == 7200.0


_SCHEDULED = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
_SENT = _SCHEDULED + timedelta(seconds=10)


@pytest.mark.parametrize(
    ("moves", "expected"),
    [
        pytest.param(
            [(Status.FAILED, "sent", 60), (Status.DELIVERED, "failed", 120)],
            (1, 0, 1.0),
            id="a late delivery after failed moves the count from failed to delivered",
        ),
        pytest.param(
            [(Status.DELIVERED, "sent", 60), (Status.FAILED, "queued", 0)],
            (1, 1, 1.0),
            # A wrong number in the register (the provider refused the request): failed, but no SMS had a fate.
            id="a reminder refused before any SMS went out leaves the delivery rate alone",
        ),
    ],
)
def test_the_delivery_figures_of_a_day_follow_each_move(
    moves: list[tuple[Status, str, int]], expected: tuple[int, int, float]
) -> None:
    sent_first = (Status.SENT, "queued", _SENT, _SCHEDULED, None)
    counters = _counts_of(
        [
            sent_first,
            *(
                (
                    target,
                    source,
                    _SENT + timedelta(seconds=after),
                    _SCHEDULED,
                    _SENT if source in ("sent", "failed") else None,
                )
                for target, source, after in moves
            ),
        ]
    )
    figures = figures_from_counters(counters)
    assert (figures.delivered, figures.failed, figures.delivery_rate) == expected


def test_a_cancelled_reminder_found_sent_moves_the_count_from_cancelled_to_sent() -> None:
    """Its SMS had gone out before the cancellation was written (sending._went_out): sent once, not cancelled."""
    scheduled = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
    counters = _counts_of(
        [
            (Status.CANCELLED, "queued", scheduled + timedelta(minutes=5), scheduled, None),
            (Status.SENT, "cancelled", scheduled + timedelta(minutes=10), scheduled, None),
        ]
    )
    figures = figures_from_counters(counters)
    assert (figures.sent, figures.cancelled, figures.sms_sent) == (1, 0, 1)


def test_figures_without_data_have_no_averages() -> None:
    figures = figures_from_counters({})
    assert figures.as_dict() == {
        "planned": 0,
        "sent": 0,
        "sms_sent": 0,
        "delivered": 0,
        "failed": 0,
        "dead_lettered": 0,
        "expired": 0,
        "cancelled": 0,
        "retried": 0,
        "pending": 0,
        "delivery_rate": None,
        "delivery_time_avg_seconds": None,
        "delivery_time_p95_seconds": None,
        "lateness_avg_seconds": None,
        "lateness_p95_seconds": None,
        "sent_by_provider": {},
    }


def test_reminders_sent_are_counted_by_the_provider_that_took_them() -> None:
    at = datetime(2027, 3, 1, 9, tzinfo=UTC)
    counts: dict[tuple[str, str], float] = {}
    for provider in ("orange", "kannel", "orange"):
        for key, amount in transition_counts(
            "7_day_reminder", "queued", Status.SENT, at, {"provider": provider}, at, None
        ).items():
            counts[key] = counts.get(key, 0) + amount
    figures = figures_from_counters({key.rsplit("#", 1)[1]: value for (_, key), value in counts.items()})
    assert (figures.sent, figures.sent_by_provider) == (3, {"kannel": 1, "orange": 2})


# ---------------------------------------------------------------------------------------------- the report


def test_build_report_lists_every_type_and_totals_them() -> None:
    counters = {
        "2027-03-01": {
            "10#1_day_reminder#sent": 2,
            "10#1_day_reminder#lateness_sum": 20,
            "10#1_day_reminder#lateness_le_10": 2,
            "10#overdue_reminder#sent": 1,
            "10#overdue_reminder#lateness_sum": 100,
            "10#overdue_reminder#lateness_le_120": 1,
            "10#overdue_reminder#expired": 4,
        }
    }
    pending = {"7_day_reminder": 3, "1_day_reminder": 1}
    report = build_report("hour", T, counters, pending)
    assert list(report.by_type) == ["7_day_reminder", "1_day_reminder", "overdue_reminder"]
    assert report.by_type["7_day_reminder"].sent == 0 and report.by_type["7_day_reminder"].pending == 3
    assert report.by_type["overdue_reminder"].expired == 4
    assert (report.total.sent, report.total.expired, report.total.pending) == (3, 4, 4)
    assert report.total.lateness_avg_seconds == pytest.approx(40.0)
    assert report.total.lateness_p95_seconds == 120.0
    data = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    assert data["window_start"] == "2027-03-01T09:30:00.000Z"
    assert data["counted_from"] == "2027-03-01T09:00:00.000Z"
    assert data["window_end"] == "2027-03-01T10:30:00.000Z"
    assert data["by_type"]["1_day_reminder"]["pending"] == 1 and "queued" not in data["by_type"]["1_day_reminder"]


def test_an_unknown_reminder_type_in_the_counters_is_still_reported() -> None:
    report = build_report("hour", T, {"2027-03-01": {"10#legacy_type#sent": 1}}, {})
    assert report.by_type["legacy_type"].sent == 1 and report.total.sent == 1


@pytest.mark.parametrize(
    ("zone", "now", "day"),
    [
        ("UTC", datetime(2027, 3, 2, 0, 0, tzinfo=UTC), "2027-03-01"),
        ("UTC", datetime(2027, 3, 2, 0, 0, 7, tzinfo=UTC), "2027-03-01"),  # a few seconds late
        ("Europe/Paris", datetime(2027, 3, 1, 23, 0, tzinfo=UTC), "2027-03-01"),  # 00:00 in Paris on Mar 2
        ("America/New_York", datetime(2027, 3, 2, 5, 0, tzinfo=UTC), "2027-03-01"),
    ],
)
def test_the_daily_report_is_named_after_the_local_day_it_covers(zone: str, now: datetime, day: str) -> None:
    assert report_day(now, build_settings(APP_TIMEZONE=zone)) == day


def test_a_deferral_for_quiet_hours_or_a_hold_is_not_a_retry() -> None:
    at = datetime(2027, 3, 1, 21, 0, tzinfo=UTC)
    deferred = transition_counts("1_day_reminder", "queued", Status.PENDING, at, {"due_at": "x"}, at, None)
    retried = transition_counts("1_day_reminder", "queued", Status.PENDING, at, {"attempts": 2}, at, None)
    assert deferred == {}
    assert list(retried.values()) == [1]


def test_reminders_and_sms_are_counted_apart_and_an_sms_once_however_many_it_carried() -> None:
    """Two SMS: one carrying three reminders (each write adds a third), one carrying one."""
    from core.counters import transition_counts

    at = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
    counters: dict[str, float] = {}
    for carried in (3, 3, 3, None):
        for (_, key), value in transition_counts(
            "7_day_reminder", "queued", Status.SENT, at, {"sms_reminders": carried}, at, None
        ).items():
            name = key.rsplit("#", 1)[1]
            counters[name] = counters.get(name, 0) + value
    figures = figures_from_counters(counters)
    assert (figures.sent, figures.sms_sent) == (4, 2)


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("Europe/Paris", "2027-03-28", 23),
        ("Europe/Paris", "2027-10-31", 25),
        ("Europe/Paris", "2027-06-01", 24),
        ("Asia/Kolkata", "2027-06-01", 24),  # a half-hour zone: its days begin at 18:30 UTC
    ],
)
@pytest.mark.parametrize("late", [timedelta(0), timedelta(seconds=40)])
def test_a_daily_report_counts_each_hour_of_its_local_day_once(
    zone: str, day: str, hours: int, late: timedelta
) -> None:
    """Paris's spring-forward day has 23 hours and its fall-back day 25: a fixed 24-hour window counted an hour of
    the day before twice on the first and left one out on the second. A run at local midnight (or a little after)
    also counted the hour it fell in, which the next day counts again: in a half-hour zone, half an hour of each
    day's changes went into two reports (and, counted in the day it begins in, into none: read before it ended).
    Each UTC hour belongs to the local day it ends in, complete when that day's report is made."""
    hour = timedelta(hours=1)
    days = [_previous(day), day, _next(day)]
    starts = [local_day_start(d, zone) for d in [*days, _next(_next(day))]]
    assert starts[2] - starts[1] == timedelta(hours=hours)
    reports = [hour_buckets("day", starts[n + 1] + late, starts[n], starts[n + 1]) for n in range(3)]
    assert len(reports[1]) == hours
    made = [[datetime.fromisoformat(f"{d}T{h}:00:00+00:00") for d, h in report] for report in reports]
    joined = made[0] + made[1] + made[2]
    assert joined == [made[0][0] + n * hour for n in range(len(joined))], "every hour once, none left out"
    assert all(h + hour <= starts[n + 1] for n in range(3) for h in made[n]), "each hour complete when read"


def _next(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def _previous(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


def test_a_grouped_sms_carrying_two_reminder_types_shows_each_types_share_not_zero() -> None:
    """Awa's 7-day and Kofi's 1-day reminder in one SMS: each type's `sms` counter gets half of it, and the figure,
    rounded half to even, read 0 SMS for each type beside 1 sent (the total said 1)."""
    now = datetime(2027, 3, 5, 10, 0, tzinfo=UTC)
    day = {"09#7_day_reminder#sent": 1, "09#7_day_reminder#sms": 0.5, "09#1_day_reminder#sent": 1}
    day["09#1_day_reminder#sms"] = 0.5
    report = build_report("day", now, {"2027-03-05": day}, {})
    shares = {t: f.sms_sent for t, f in report.by_type.items() if f.sent}
    assert shares == {"7_day_reminder": 0.5, "1_day_reminder": 0.5}
    assert report.total.sms_sent == 1 and report.total.as_dict()["sms_sent"] == 1
