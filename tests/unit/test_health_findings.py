"""Health thresholds without AWS: which figures raise which finding, and the metrics a report yields."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from core.circuit import Circuit, CircuitKind
from core.health import HealthFigures, HealthReport, configuration_advice, findings_for, metric_values
from core.metric_names import HEALTH, MetricName
from core.providers.base import Balance
from core.settings import build_settings

pytestmark = pytest.mark.unit

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = build_settings(
    SMS_ALERT_PENDING_THRESHOLD=100,
    SMS_ALERT_FAILURE_RATE=0.1,
    SMS_ALERT_PROCESSING_DELAY_MINUTES=120,
    SMS_ALERT_BALANCE_UNITS=1000,
)
HEALTHY = HealthFigures(
    checked_at=NOW,
    pending_count=10,
    queued_count=0,
    pending_due_count=0,
    oldest_due_at=None,
    sent_last_hour=50,
    failures_last_hour=1,
    undelivered_last_hour=0,
    last_send_at=NOW - timedelta(minutes=3),
    dead_letter_depth=0,
    circuits=(),
    balance=Balance(available_units=5000, expires_at=NOW + timedelta(days=90), status="ACTIVE"),
    balance_error=None,
)


def test_healthy_figures_raise_nothing() -> None:
    assert findings_for(HEALTHY, SETTINGS) == ()
    assert HealthReport(HEALTHY, ()).healthy


def test_due_and_waiting_above_the_threshold() -> None:
    """Pending reminders planned for later are no backlog, however many."""
    assert findings_for(replace(HEALTHY, pending_count=10_000), SETTINGS) == ()
    due = replace(HEALTHY, pending_due_count=101, oldest_due_at=NOW)
    assert findings_for(replace(due, pending_due_count=100), SETTINGS) == ()
    assert findings_for(due, SETTINGS) == ("101 messages are due and waiting (threshold 100).",)


def test_oldest_due_lag_above_the_threshold_reads_like_the_brief() -> None:
    figures = replace(HEALTHY, pending_due_count=412, oldest_due_at=NOW - timedelta(minutes=134, seconds=30))
    assert figures.oldest_due_lag_minutes == 134
    assert findings_for(figures, SETTINGS) == (
        "412 messages are due but not dispatched; the oldest has waited 134 minutes (threshold 120).",
    )


def test_a_quiet_night_then_one_message_due_is_not_a_stall() -> None:
    figures = replace(
        HEALTHY, pending_due_count=1, oldest_due_at=NOW - timedelta(minutes=1), last_send_at=NOW - timedelta(hours=9)
    )
    assert figures.minutes_without_send_while_due == 1
    assert findings_for(figures, SETTINGS) == ()


def test_no_send_while_work_waits_is_a_stall() -> None:
    figures = replace(
        HEALTHY,
        pending_due_count=3,
        oldest_due_at=NOW - timedelta(minutes=200),
        last_send_at=NOW - timedelta(minutes=150),
    )
    assert figures.minutes_without_send_while_due == 150
    assert findings_for(figures, SETTINGS)[1] == (
        "No message has been sent for 150 minutes while 3 are due; work has waited 150 minutes without a send"
        " (threshold 120)."
    )


def test_no_send_ever_while_work_waits_is_a_stall() -> None:
    figures = replace(HEALTHY, pending_due_count=2, oldest_due_at=NOW - timedelta(minutes=121), last_send_at=None)
    assert figures.minutes_without_send_while_due == 121
    assert "No message has ever been sent while 2 are due" in findings_for(figures, SETTINGS)[1]


def test_failure_rate_over_the_last_hour() -> None:
    assert replace(HEALTHY, sent_last_hour=0, failures_last_hour=0).failure_rate is None
    figures = replace(HEALTHY, sent_last_hour=7, failures_last_hour=3)
    assert figures.failure_rate == pytest.approx(0.3)
    assert findings_for(figures, SETTINGS) == (
        "In the last hour 3 messages failed or were dead-lettered against 7 sent: a failure rate of 30%"
        " (threshold 10%).",
    )
    assert findings_for(replace(HEALTHY, sent_last_hour=1, failures_last_hour=1), SETTINGS) == (
        "In the last hour 1 message failed or was dead-lettered against 1 sent: a failure rate of 50% (threshold 10%).",
    )
    # Failures reported after a send are among the sends: 3 of 7 sent undeliverable, none failing before a send.
    assert replace(figures, undelivered_last_hour=3).failure_rate == pytest.approx(3 / 7)
    # A failure receipt whose send fell in the hour before: never above one.
    assert replace(HEALTHY, sent_last_hour=0, failures_last_hour=2, undelivered_last_hour=2).failure_rate == 1.0


def test_dead_letters_hold_and_balance_problems_each_raise_one_finding() -> None:
    figures = replace(
        HEALTHY,
        dead_letter_depth=1,
        circuits=(
            Circuit(
                "orange",
                failures=0,
                retry_at=NOW + timedelta(minutes=30),
                opened_at=NOW,
                kind=CircuitKind.HOLD,
                reason="403 no bundle left",
            ),
        ),
        balance=Balance(available_units=10, expires_at=NOW + timedelta(days=3, hours=1), status="ACTIVE"),
    )
    assert findings_for(figures, SETTINGS) == (
        "1 message waits in the dead letter queue; inspect them and redrive (`rappel redrive`).",
        "Sending to orange is held since 2027-03-01 12:00 UTC; next probe at 2027-03-01 12:30 UTC: 403 no bundle left.",
        "The provider balance is 10 SMS units (threshold 1000); buy a bundle.",
        "The provider bundle expires on 2027-03-04 13:00 UTC, in 3 days.",
    )


def test_an_expired_bundle_and_an_unreadable_balance() -> None:
    expired = Balance(available_units=5000, expires_at=NOW - timedelta(days=1), status="EXPIRED")
    assert findings_for(replace(HEALTHY, balance=expired), SETTINGS) == (
        "The provider bundle expired on 2027-02-28 12:00 UTC.",
    )
    unreadable = replace(HEALTHY, balance=None, balance_error="transient connect_error: ConnectionError")
    assert findings_for(unreadable, SETTINGS) == (
        "Could not read the provider balance: transient connect_error: ConnectionError.",
    )


def test_a_provider_without_balance_is_not_a_finding_and_emits_no_balance_metric() -> None:
    figures = replace(HEALTHY, balance=None)
    assert findings_for(figures, SETTINGS) == ()
    assert MetricName.HEALTH_PROVIDER_BALANCE_UNITS not in metric_values(HealthReport(figures, ()))


def test_every_health_metric_is_emitted_including_zeros() -> None:
    values = metric_values(HealthReport(HEALTHY, ()))
    assert set(values) == HEALTH
    assert values[MetricName.HEALTH_UNHEALTHY] == 0
    assert values[MetricName.HEALTH_MINUTES_SINCE_LAST_SEND] == 0  # nothing due
    assert metric_values(HealthReport(HEALTHY, ("x",)))[MetricName.HEALTH_UNHEALTHY] == 1


@pytest.mark.parametrize(
    ("rate", "concurrency", "advice"),
    [
        (5, 5, None),
        (25, 5, None),
        (12, 2, None),
        (7.5, 7, None),  # half an SMS a second unused: no whole concurrency would use it
        (
            5,
            2,
            "The senders use 4 of the 5 SMS per second SMS_RATE_LIMIT_PER_SECOND allows (2 senders at 2 each); set"
            " SMS_SENDER_MAX_CONCURRENCY to a divisor of it (5).",
        ),
        (
            25,
            2,
            "The senders use 24 of the 25 SMS per second SMS_RATE_LIMIT_PER_SECOND allows (2 senders at 12 each);"
            " set SMS_SENDER_MAX_CONCURRENCY to a divisor of it (5, 25).",
        ),
        (
            7.5,
            2,
            "The senders use 6 of the 7.5 SMS per second SMS_RATE_LIMIT_PER_SECOND allows (2 senders at 3 each);"
            " set SMS_SENDER_MAX_CONCURRENCY to a divisor of it (7).",
        ),
        (
            1000,
            7,
            "The senders use 994 of the 1000 SMS per second SMS_RATE_LIMIT_PER_SECOND allows (7 senders at 142"
            " each); set SMS_SENDER_MAX_CONCURRENCY to a divisor of it (4, 5, 8).",
        ),
    ],
)
def test_a_concurrency_that_leaves_part_of_the_rate_unused_gets_advice_not_an_alarm(
    rate: float, concurrency: int, advice: str | None
) -> None:
    """Advice stays out of the findings: an unhealthy state that only a deploy ends would keep the alarm on and
    hide the next real problem."""
    settings = build_settings(SMS_RATE_LIMIT_PER_SECOND=rate, SMS_SENDER_MAX_CONCURRENCY=concurrency)
    assert configuration_advice(settings) == ((advice,) if advice else ())
    assert findings_for(HEALTHY, settings) == ()
    report = HealthReport(HEALTHY, findings_for(HEALTHY, settings), configuration_advice(settings))
    assert report.healthy and report.as_dict()["advice"] == list(report.advice)
    assert metric_values(report)[MetricName.HEALTH_UNHEALTHY] == 0


def test_retries_that_run_out_before_the_circuit_opens_get_advice() -> None:
    """With SMS_MAX_RETRIES below SMS_CIRCUIT_FAILURES − 1, a reminder alone in an outage spends its attempts before
    the failures open the circuit, and is dead-lettered though the provider, not the message, was failing."""
    advice = configuration_advice(build_settings(SMS_MAX_RETRIES=1, SMS_CIRCUIT_FAILURES=5))
    assert advice == (
        "SMS_MAX_RETRIES (1) runs out before SMS_CIRCUIT_FAILURES (5) failures in a row open a provider's circuit:"
        " a reminder alone in an outage is dead-lettered on its own attempts; set SMS_MAX_RETRIES to at least 4.",
    )
    assert configuration_advice(build_settings()) == ()
