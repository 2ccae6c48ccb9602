"""Statistics and health on moto: counters kept by real transitions, every health threshold, EMF output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from core import observability, provider_state, store
from core.dispatch import dispatch_due
from core.health import check_health
from core.lifecycle import Status
from core.metric_names import HEALTH
from core.planning import handle_clinic_event
from core.providers import factory
from core.queue import QueuedMessage, put_dead_letter
from core.settings import reset_settings
from core.statistics import PENDING_HORIZON, load_daily_report, statistics
from core.store import Change, iso, parse_iso
from rappel_local.embedded import invoke
from rappel_local.orange_simulator import OrangeSimulator
from tests.helpers import dose, patient

pytestmark = pytest.mark.integration

DUE = "2027-03-20"
SEVEN_DAY_AT = datetime(2027, 3, 13, 9, 0, tzinfo=UTC)  # 7 days before, 09:00 Abidjan (UTC+0)
CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens: the balance read fails at once, offline


def _point_orange_at(aws, monkeypatch: pytest.MonkeyPatch, base_url: str) -> None:
    aws.with_settings(ORANGE_API_BASE_URL=base_url)
    aws.environment["ORANGE_API_BASE_URL"] = base_url
    monkeypatch.setenv("ORANGE_API_BASE_URL", base_url)  # for handlers, which read the environment
    reset_settings()
    factory.reset()


@pytest.fixture
def no_provider(aws, monkeypatch: pytest.MonkeyPatch):
    """The stack with Orange unreachable (no simulator)."""
    _point_orange_at(aws, monkeypatch, CLOSED_PORT)
    return aws


def _start_orange(aws, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> OrangeSimulator:
    simulator = OrangeSimulator(clock=aws.clock, client_id="rappel-test", client_secret="s3cret-test", **kwargs)
    simulator.start()
    _point_orange_at(aws, monkeypatch, simulator.base_url)
    return simulator


@pytest.fixture
def orange(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[OrangeSimulator]:
    """The stack with a simulated Orange holding plenty of units."""
    simulator = _start_orange(aws, monkeypatch)
    yield simulator
    simulator.stop()


def _plan(aws, patients: int = 1) -> None:
    for n in range(1, patients + 1):
        assert handle_clinic_event(patient(f"p{n}"), aws.settings).applied == 1
        assert handle_clinic_event(dose(f"a{n}", f"p{n}", due_date=DUE), aws.settings).created == 3


def _id(n: int, reminder_type: str = "7_day_reminder") -> str:
    return store.message_id_for(f"a{n}", reminder_type, DUE, f"p{n}")


def _move(aws, message_id: str, target: Status, source: Status, at: datetime, **values: Any) -> None:
    aws.clock.advance_to(at)
    message = store.get_message(message_id)
    assert message is not None and message.status == source.value
    change = Change(target, frozenset({source}), values)
    assert store.transition(message, change, at=at, settings=aws.settings)


def _send(aws, message_id: str, queued: datetime, sent: datetime) -> None:
    _move(aws, message_id, Status.QUEUED, Status.PENDING, queued, queued_at=iso(queued))
    _move(aws, message_id, Status.SENT, Status.QUEUED, sent, sent_at=iso(sent))


def _receipt(aws, message_id: str, target: Status, at: datetime) -> None:
    stamp = {Status.DELIVERED: "delivered_at", Status.FAILED: "failed_at"}[target]
    _move(aws, message_id, target, Status.SENT, at, **{stamp: iso(at)})


def _seed_a_morning(aws) -> datetime:
    """Four patients; their 7-day reminders go out (or not) on the morning of Mar 13. Returns T0 + 30 min."""
    t0 = SEVEN_DAY_AT
    _plan(aws, patients=4)
    _send(aws, _id(1), t0 + timedelta(seconds=10), t0 + timedelta(seconds=30))
    _receipt(aws, _id(1), Status.DELIVERED, t0 + timedelta(seconds=35))
    _send(aws, _id(2), t0 + timedelta(seconds=60), t0 + timedelta(seconds=90))
    _receipt(aws, _id(2), Status.DELIVERED, t0 + timedelta(seconds=110))
    _send(aws, _id(3), t0 + timedelta(minutes=4), t0 + timedelta(seconds=300))
    _receipt(aws, _id(3), Status.FAILED, t0 + timedelta(seconds=360))
    _move(aws, _id(4), Status.QUEUED, Status.PENDING, t0 + timedelta(minutes=5))
    _move(aws, _id(4), Status.PENDING, Status.QUEUED, t0 + timedelta(minutes=5, seconds=30), attempts=1)  # retry
    _move(aws, _id(4), Status.QUEUED, Status.PENDING, t0 + timedelta(minutes=5, seconds=40))
    _move(aws, _id(4), Status.DEAD_LETTER, Status.QUEUED, t0 + timedelta(minutes=6))
    _move(aws, _id(4, "1_day_reminder"), Status.EXPIRED, Status.PENDING, t0 + timedelta(minutes=7))
    now = t0 + timedelta(minutes=30)
    aws.clock.advance_to(now)
    aws.tally()
    return now


def _value(emf: float | list[float]) -> float:
    # Powertools writes a metric's values as a list (one per add_metric); health records each figure once.
    if isinstance(emf, list):
        assert len(emf) == 1
        return emf[0]
    return emf


# ---------------------------------------------------------------------------------------------- statistics


def test_statistics_count_exactly_what_the_transitions_did(aws) -> None:
    now = _seed_a_morning(aws)
    report = statistics("hour", aws.settings, now)
    seven = report.by_type["7_day_reminder"]
    assert (seven.planned, seven.sent, seven.delivered, seven.failed, seven.dead_lettered) == (0, 3, 2, 1, 1)
    assert (seven.expired, seven.cancelled, seven.retried, seven.pending) == (0, 0, 1, 0)
    assert seven.delivery_rate == pytest.approx(2 / 3)
    assert seven.delivery_time_avg_seconds == pytest.approx(12.5)  # 5 s and 20 s
    assert seven.delivery_time_p95_seconds == 20.0
    assert seven.lateness_avg_seconds == pytest.approx(140.0)  # 30, 90 and 300 s
    assert seven.lateness_p95_seconds == 300.0
    one_day, overdue = report.by_type["1_day_reminder"], report.by_type["overdue_reminder"]
    assert (one_day.expired, one_day.pending, one_day.sent, one_day.delivery_rate) == (1, 0, 0, None)
    assert (overdue.pending, overdue.sent) == (0, 0)  # due Mar 19 and 21: beyond PENDING_HORIZON
    total = report.total
    assert (total.sent, total.delivered, total.failed, total.dead_lettered, total.expired) == (3, 2, 1, 1, 1)
    assert (total.pending, total.retried, total.delivery_time_p95_seconds) == (0, 1, 20.0)
    assert json.loads(json.dumps(report.as_dict(), allow_nan=False))["total"]["sent"] == 3


def test_windows_select_the_hours_that_count(aws) -> None:
    now = _seed_a_morning(aws)
    week = statistics("week", aws.settings, now)
    assert (week.total.sent, week.total.planned) == (3, 0)  # planned on Mar 1, more than a week ago
    early = statistics("day", aws.settings, datetime(2027, 3, 1, 9, 0, tzinfo=UTC))
    assert early.total.planned == 12
    assert {t: f.planned for t, f in early.by_type.items()} == dict.fromkeys(early.by_type, 4)
    assert early.total.sent == 0
    later = statistics("hour", aws.settings, now + timedelta(hours=2))
    assert later.total.sent == 0 and later.total.pending == 0


def test_replayed_planning_events_leave_the_counters_exact(aws) -> None:
    handle_clinic_event(patient(), aws.settings)
    scheduled = dose("a1", "p1", due_date=DUE)
    handle_clinic_event(scheduled, aws.settings)
    aws.tally()
    planned = statistics("hour", aws.settings, aws.clock.now()).total.planned
    assert planned == 3
    handle_clinic_event(scheduled, aws.settings)
    handle_clinic_event(scheduled, aws.settings)
    handle_clinic_event(dose("a1", "p1", due_date=DUE), aws.settings)  # same content, a new event id
    aws.tally()
    report = statistics("hour", aws.settings, aws.clock.now())
    assert (report.total.planned, report.total.cancelled) == (3, 0)


def test_the_daily_run_stores_and_logs_its_report_and_emits_no_metrics(aws, capsys, caplog) -> None:
    _seed_a_morning(aws)
    aws.clock.advance_to(datetime(2027, 3, 14, 0, 0, tzinfo=UTC))
    observability.discard_metrics()
    capsys.readouterr()
    result = invoke("daily_statistics", {"source": "aws.scheduler"})
    assert result["since"] == "day" and result["total"]["sent"] == 3
    assert result["by_type"]["7_day_reminder"]["lateness_p95_seconds"] == 300.0
    assert load_daily_report("2027-03-13", aws.settings) == result
    assert '"_aws"' not in capsys.readouterr().out  # EMF goes through print; the logger's stream is not captured
    logged = [record for record in caplog.records if record.getMessage() == "daily statistics"]
    assert len(logged) == 1
    assert logged[0].report_day == "2027-03-13" and logged[0].report == result


# ---------------------------------------------------------------------------------------------- health


def test_a_healthy_system_reports_healthy(aws, orange) -> None:
    _plan(aws, patients=2)
    provider_state.record_send(aws.clock.now() - timedelta(minutes=5))
    report = check_health(aws.settings, aws.clock.now())
    assert report.findings == ()
    assert report.healthy
    data = report.as_dict()
    assert (data["pending_count"], data["pending_due_count"], data["oldest_due_lag_minutes"]) == (0, 0, 0)
    assert (data["dead_letter_depth"], data["failure_rate"], data["minutes_without_send_while_due"]) == (0, None, 0)
    assert data["provider_balance_units"] == 1_000_000 and data["provider_balance_error"] is None


def test_an_unreadable_balance_is_a_finding_not_a_crash(no_provider) -> None:
    report = check_health(no_provider.settings, no_provider.clock.now())
    assert not report.healthy
    assert len(report.findings) == 1
    assert report.findings[0].startswith("Could not read the provider balance: ")


def test_the_pending_threshold_is_about_the_backlog_not_the_reminders_planned_ahead(aws, orange) -> None:
    """Every family's future reminders are pending: a program of a few hundred children passes any fixed count of
    them for good, and an alarm that never clears tells nothing. The threshold is for those due and still waiting."""
    _plan(aws, patients=2)
    settings = aws.with_settings(SMS_ALERT_PENDING_THRESHOLD=1)
    report = check_health(settings, aws.clock.now())
    assert (report.figures.pending_count, report.figures.pending_due_count) == (0, 0) and report.healthy
    aws.clock.advance_to(SEVEN_DAY_AT - timedelta(hours=1))
    report = check_health(settings, aws.clock.now())
    assert (report.figures.pending_count, report.figures.pending_due_count) == (2, 0) and report.healthy
    aws.clock.advance_to(parse_iso(store.get_message(_id(1)).scheduled_at))  # type: ignore[union-attr]
    assert check_health(settings, aws.clock.now()).findings == ("2 messages are due and waiting (threshold 1).",)
    assert check_health(aws.with_settings(SMS_ALERT_PENDING_THRESHOLD=2), aws.clock.now()).healthy


def test_a_due_message_waiting_too_long_while_sends_go_on(aws, orange) -> None:
    _plan(aws, patients=2)
    now = SEVEN_DAY_AT + timedelta(minutes=134, seconds=20)
    aws.clock.advance_to(now)
    provider_state.record_send(now - timedelta(minutes=10))
    report = check_health(aws.settings, now)
    assert report.findings == (
        "2 messages are due but not dispatched; the oldest has waited 134 minutes (threshold 120).",
    )
    assert report.figures.minutes_without_send_while_due == 10


def test_nothing_sent_while_work_waits(aws, orange) -> None:
    _plan(aws, patients=1)
    now = SEVEN_DAY_AT + timedelta(minutes=200)
    aws.clock.advance_to(now)
    provider_state.record_send(now - timedelta(minutes=150))
    findings = check_health(aws.settings, now).findings
    assert findings == (
        "1 message is due but not dispatched; the oldest has waited 200 minutes (threshold 120).",
        "No message has been sent for 150 minutes while 1 is due; work has waited 150 minutes without a send"
        " (threshold 120).",
    )


def test_claimed_messages_are_counted_on_the_send_queue_not_as_waiting_for_dispatch(aws, orange) -> None:
    _plan(aws, patients=2)
    now = SEVEN_DAY_AT + timedelta(minutes=200)
    aws.clock.advance_to(now)
    dispatched = dispatch_due(aws.settings)  # the two due 7-day reminders: enqueued, claimed, out of the index
    assert (dispatched.enqueued, dispatched.claimed) == (2, 2)
    provider_state.record_send(now)
    report = check_health(aws.settings, now)
    assert report.healthy
    # One record: the two reminders go to one phone in one slot, as one SMS.
    assert (report.figures.pending_count, report.figures.queued_count, report.figures.pending_due_count) == (0, 1, 0)


def test_failure_rate_over_the_last_hour(aws, orange) -> None:
    _plan(aws, patients=2)
    t0 = SEVEN_DAY_AT
    _send(aws, _id(1), t0, t0 + timedelta(seconds=10))
    _send(aws, _id(2), t0, t0 + timedelta(seconds=20))
    _receipt(aws, _id(2), Status.FAILED, t0 + timedelta(seconds=80))
    provider_state.record_send(t0 + timedelta(seconds=20))
    aws.tally()  # the counters health reads follow the stream
    report = check_health(aws.settings, t0 + timedelta(minutes=5))
    assert (report.figures.sent_last_hour, report.figures.failures_last_hour) == (2, 1)
    assert report.findings == (
        "In the last hour 1 message failed or was dead-lettered against 2 sent: a failure rate of 50% (threshold 10%).",
    )
    assert check_health(aws.settings, t0 + timedelta(hours=2, minutes=1)).healthy  # the hour has passed


def test_every_sms_undeliverable_is_a_failure_rate_of_one(aws, orange) -> None:
    """A sent reminder whose receipt says DeliveryImpossible counts in `sent` and in `failed`: the rate was read as
    failures / (sent + failures), 50% when every SMS of the hour failed, so a threshold of 0.5 or more never fired on
    undeliverable numbers. A failure after a send is one of the sends, not one more outcome."""
    _plan(aws, patients=4)
    t0 = SEVEN_DAY_AT
    for n in range(1, 5):
        _send(aws, _id(n), t0 + timedelta(seconds=n), t0 + timedelta(seconds=10 + n))
        _receipt(aws, _id(n), Status.FAILED, t0 + timedelta(seconds=60 + n))
    aws.tally()
    report = check_health(aws.with_settings(SMS_ALERT_FAILURE_RATE="0.9"), t0 + timedelta(minutes=5))
    assert (report.figures.sent_last_hour, report.figures.failures_last_hour) == (4, 4)
    assert report.figures.failure_rate == 1.0 and not report.healthy


def test_dead_letters_on_the_queue(aws, orange) -> None:
    put_dead_letter(QueuedMessage("msg_x", 1), aws.settings)
    put_dead_letter(QueuedMessage("msg_y", 3), aws.settings)
    report = check_health(aws.settings, aws.clock.now())
    assert report.findings == (
        "2 messages wait in the dead letter queue; inspect them and redrive (`rappel redrive`).",
    )


def test_rappel_health_shows_the_clinic_events_and_statistics_batches_waiting_for_an_operator(aws, orange) -> None:
    """`rappel health` read the send DLQ only: clinic events planning gave up on, and statistics batches the tally
    gave up on, waited unseen but for their queues' alarms. The health_check function has no right to read them
    (their own SQS alarms watch them there): its figures are left out (None)."""
    sqs = boto3.client("sqs", region_name=aws.settings.AWS_REGION)
    sqs.send_message(QueueUrl=aws.settings.PLANNING_DEAD_LETTER_QUEUE_URL, MessageBody=json.dumps(dose()))
    for _ in range(2):
        sqs.send_message(QueueUrl=aws.settings.TALLY_FAILURE_QUEUE_URL, MessageBody="{}")

    report = check_health(aws.settings, aws.clock.now(), operator=True)

    assert report.findings == (
        "1 clinic event waits in the planning dead letter queue: fix what failed (plan_reminders' logs), then"
        " `rappel replay-events`.",
        "2 statistics batches wait in the tally failure queue: fix what failed (tally_changes' logs), then"
        " `rappel retally` within the streams' 24 hours.",
    )
    assert (report.as_dict()["planning_dead_letter_depth"], report.as_dict()["tally_failure_depth"]) == (1, 2)
    in_lambda = check_health(aws.settings, aws.clock.now())
    assert in_lambda.findings == () and in_lambda.as_dict()["planning_dead_letter_depth"] is None


def test_a_provider_hold_and_an_outage_are_findings_until_the_provider_answers(aws, orange) -> None:
    now = aws.clock.now()
    aws.with_settings(SMS_PROVIDERS="orange,kannel")
    provider_state.hold("orange", now, aws.settings, "403 no bundle left")
    for _ in range(aws.settings.SMS_CIRCUIT_FAILURES):
        provider_state.record_transient_failure("kannel", now, aws.settings, "http_503: down")
    report = check_health(aws.settings, now)
    assert report.findings == (
        "Sending to kannel is paused by an outage since 2027-03-01 08:00 UTC; next probe at 2027-03-01 08:01 UTC:"
        " http_503: down.",
        "Sending to orange is held since 2027-03-01 08:00 UTC; next probe at 2027-03-01 08:30 UTC: 403 no bundle left.",
    )
    assert [c["provider"] for c in report.as_dict()["circuits"]] == ["kannel", "orange"]
    provider_state.record_answer("orange", now + timedelta(minutes=31))
    provider_state.record_answer("kannel", now + timedelta(minutes=31))
    assert check_health(aws.settings, now + timedelta(minutes=31)).healthy


def test_a_low_balance_and_a_bundle_about_to_expire(aws, monkeypatch) -> None:
    now = aws.clock.now()
    simulator = _start_orange(aws, monkeypatch, available_units=10, bundle_expires_at=now + timedelta(days=3))
    try:
        report = check_health(aws.settings, now)
        at_threshold = check_health(aws.with_settings(SMS_ALERT_BALANCE_UNITS=10), now)
        bundle_later = check_health(aws.settings, now - timedelta(days=1))
    finally:
        simulator.stop()
    assert report.findings == (
        "The provider balance is 10 SMS units (threshold 1000); buy a bundle.",
        "The provider bundle expires on 2027-03-04 08:00 UTC, in 3 days.",
    )
    assert at_threshold.findings == ("The provider bundle expires on 2027-03-04 08:00 UTC, in 3 days.",)
    assert bundle_later.findings == ("The provider bundle expires on 2027-03-04 08:00 UTC, in 4 days.",)


def test_a_kannel_deployment_has_no_balance_and_is_not_unhealthy_for_it(aws) -> None:
    report = check_health(aws.with_settings(SMS_PROVIDER="kannel"), aws.clock.now())
    assert report.healthy and report.figures.balance is None


def test_the_handler_emits_every_health_figure_as_emf_with_the_service_dimension_only(no_provider, capsys) -> None:
    _plan(no_provider, patients=1)
    no_provider.clock.advance_to(SEVEN_DAY_AT - timedelta(hours=1))  # its 7-day reminder within PENDING_HORIZON
    observability.discard_metrics()  # planning's metrics belong to another invocation
    capsys.readouterr()
    result = invoke("health_check", {"source": "aws.scheduler"})
    assert result["healthy"] is False and result["pending_count"] == 1
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert len(blobs) == 1
    directive = blobs[0]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Rappel"
    assert directive["Dimensions"] == [["service"]]
    assert blobs[0]["service"] == "rappel"
    names = {metric["Name"] for metric in directive["Metrics"]}
    assert names == {name.value for name in HEALTH} - {"HealthProviderBalanceUnits"}  # unreadable: no data
    values = {name: _value(blobs[0][name]) for name in names}
    assert (values["HealthUnhealthy"], values["HealthPendingCount"], values["HealthDeadLetterDepth"]) == (1, 1, 0)


def test_the_handler_reports_the_balance_when_the_provider_answers(aws, orange, capsys) -> None:
    observability.discard_metrics()
    capsys.readouterr()
    result = invoke("health_check", {})
    assert result["healthy"] is True
    blob = next(json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"'))
    assert (_value(blob["HealthProviderBalanceUnits"]), _value(blob["HealthUnhealthy"])) == (1_000_000, 0)


def test_a_concurrency_leaving_part_of_the_rate_unused_is_logged_as_advice_and_raises_no_alarm(
    aws, orange, capsys, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"SMS_RATE_LIMIT_PER_SECOND": "25", "SMS_SENDER_MAX_CONCURRENCY": "2"}.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    observability.discard_metrics()
    capsys.readouterr()
    result = invoke("health_check", {})
    assert result["healthy"] is True and result["findings"] == []
    assert result["advice"] == [
        "The senders use 24 of the 25 SMS per second SMS_RATE_LIMIT_PER_SECOND allows (2 senders at 12 each); set"
        " SMS_SENDER_MAX_CONCURRENCY to a divisor of it (5, 25)."
    ]
    (logged,) = [r for r in caplog.records if r.getMessage() == "health check passed, with advice on the settings"]
    assert logged.levelname == "WARNING"
    blob = next(json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"'))
    assert _value(blob["HealthUnhealthy"]) == 0


def test_the_daily_report_stays_one_item_however_many_clinics_the_outcomes_have_counted(aws) -> None:
    """The outcome counters are cumulative, per due month and clinic, and the daily report listed every clinic ever
    counted in its one ops item (400 KB at most): some 500 clinic names over the years (renames, register typos)
    and every daily run failed. It keeps the outcome summary; per clinic is `rappel stats --outcomes`."""
    from core.statistics import daily_statistics

    store.bind(aws.settings)
    deltas = {}
    for clinic in range(700):
        sk = f"2027-02#Centre de sante urbain numero {clinic:04d}"
        for group, kind in (("reached", "7_day_reminder"), ("reached", "1_day_reminder"), ("not_reached", "none")):
            deltas[(sk, f"{group}#{kind}#appointments")] = 5
            deltas[(sk, f"{group}#{kind}#given_by_due_date")] = 2
    store.add_outcome_counts(deltas, "batch-1")
    aws.clock.advance_to(datetime(2027, 3, 2, 4, 0, tzinfo=UTC))

    daily_statistics(aws.settings)

    report = load_daily_report("2027-03-01", aws.settings)
    assert report is not None and "by_clinic" not in report["outcomes"]
    assert report["outcomes"]["reached"]["appointments"] == 700 * 2 * 5
    assert len(statistics("day", aws.settings, aws.clock.now()).outcomes["by_clinic"]) == 700 * 3  # live: all


def test_a_late_delivery_the_day_after_its_failure_takes_the_failure_back_where_it_was_counted(aws) -> None:
    """A DeliveredToTerminal the day after a DeliveryImpossible: the correction took back a `failed` and an
    `undelivered` in its own hour, which never counted them: that day's `failed` went to -1 and its delivery rate to
    200%, while the day of the failure kept it. Taken back in the hour the failure was counted, each day is right."""
    t0 = datetime(2027, 3, 13, 9, 0, tzinfo=UTC)
    _plan(aws, patients=2)
    _send(aws, _id(1), t0 + timedelta(seconds=10), t0 + timedelta(seconds=30))
    _receipt(aws, _id(1), Status.FAILED, t0 + timedelta(minutes=10))
    day2 = t0 + timedelta(days=1)
    _send(aws, _id(2), day2 + timedelta(seconds=10), day2 + timedelta(seconds=30))
    _receipt(aws, _id(2), Status.DELIVERED, day2 + timedelta(seconds=60))
    _move(aws, _id(1), Status.DELIVERED, Status.FAILED, day2 + timedelta(minutes=5), delivered_at="x")
    aws.clock.advance_to(day2 + timedelta(minutes=30))
    aws.tally()

    later = statistics("hour", aws.settings, aws.clock.now()).by_type["7_day_reminder"]
    assert (later.delivered, later.failed, later.delivery_rate) == (2, 0, 1.0)
    first_day = statistics("day", aws.settings, t0 + timedelta(hours=2)).by_type["7_day_reminder"]
    assert (first_day.failed, first_day.delivered, first_day.delivery_rate) == (0, 0, None)


def _count_due_index_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    read = [0]
    query = store.MessageRecord.due_index.query

    def counting(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for item in query(*args, **kwargs):
            read[0] += 1
            yield item

    monkeypatch.setattr(store.MessageRecord.due_index, "query", counting)
    return read


def test_health_and_statistics_read_the_next_day_not_the_schedule_years_ahead(aws, monkeypatch) -> None:
    """Every planned reminder is pending and in the `due` index, up to three years ahead: a check every 30 minutes
    that read them all would grow with every child ever registered. Pending is what is due within PENDING_HORIZON."""
    _plan(aws)  # due Mar 20: its reminders on Mar 13, 19 and 21
    for n in range(2, 12):
        assert handle_clinic_event(patient(f"p{n}"), aws.settings).applied == 1
        assert handle_clinic_event(dose(f"a{n}", f"p{n}", due_date="2029-02-01"), aws.settings).created == 3
    settings = aws.with_settings(SMS_PROVIDER="kannel")  # no balance read
    read = _count_due_index_reads(monkeypatch)
    assert check_health(settings, aws.clock.now()).figures.pending_count == 0
    assert statistics("day", aws.settings, aws.clock.now()).total.pending == 0
    assert read[0] == 0
    aws.clock.advance_to(SEVEN_DAY_AT - PENDING_HORIZON)
    assert check_health(settings, aws.clock.now()).figures.pending_count == 1
    report = statistics("day", aws.settings, aws.clock.now())
    assert (report.total.pending, report.by_type["7_day_reminder"].pending) == (1, 1)
    assert read[0] == 2  # the 7-day reminder, once by each


def test_a_provider_taken_out_of_the_settings_leaves_no_open_circuit_behind(aws) -> None:
    """A program that moves from Orange to Kannel (its bundle or contract ended) leaves Orange's held circuit in the
    ops table, and nothing routes to Orange again to close it: health reads the configured providers' circuits."""
    orange_only = aws.settings
    store.bind(orange_only)
    provider_state.hold("orange", aws.clock.now(), orange_only, "orange: 403 no bundle left")
    kannel_only = aws.with_settings(SMS_PROVIDER="kannel", SMS_PROVIDERS="")
    aws.clock.advance_to(aws.clock.now() + timedelta(days=30))
    report = check_health(kannel_only, aws.clock.now())
    assert (report.figures.circuits, report.healthy) == ((), True), report.findings
    assert len(check_health(orange_only, aws.clock.now()).figures.circuits) == 1  # still Orange's, where it is used
