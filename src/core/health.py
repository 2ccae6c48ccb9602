"""The health check: live figures about the scheduler, the findings they raise, and the metrics alarms watch.

Figures: pending messages (live, from the `due` index), how long the oldest due message has waited, failures and
the failure rate over the last hour (counters), minutes without a send while work is due, the dead letter queue's
depth, the provider hold, and the provider balance. Each threshold crossed becomes one finding, an English
sentence an operator can act on; the scheduler is healthy when there is none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from core import clock, provider_state, queue, store
from core.circuit import Circuit, CircuitKind
from core.counters import UNDELIVERED
from core.lifecycle import Status
from core.metric_names import MetricName
from core.observability import logger, measure
from core.providers.base import Balance
from core.providers.factory import provider_for
from core.settings import ProviderName, Settings
from core.statistics import PENDING_HORIZON, hour_buckets, merge, sum_counters

BUNDLE_EXPIRY_WARNING: Final[timedelta] = timedelta(days=7)
FAILURE_COUNTERS: Final[tuple[str, ...]] = (Status.FAILED.value, Status.DEAD_LETTER.value)


def _minutes(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds() // 60))


def _when(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%d %H:%M UTC")


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _due(count: int) -> str:
    return f"{count} {'is' if count == 1 else 'are'} due"


@dataclass(frozen=True)
class HealthFigures:
    """What the health check measured at `checked_at`."""

    checked_at: datetime
    pending_count: int
    queued_count: int  # records on the send queue (claimed reminders; a grouped record carries several)
    pending_due_count: int
    oldest_due_at: datetime | None
    sent_last_hour: int
    failures_last_hour: int
    undelivered_last_hour: int  # of those failures, sent reminders reported undeliverable
    last_send_at: datetime | None
    dead_letter_depth: int
    circuits: tuple[Circuit, ...]  # the providers' open circuits (outage or hold)
    balance: Balance | None
    balance_error: str | None
    # Ambiguous dead letters waiting for an operator's decision (their SMS may have gone out), until their deadline.
    undecided_count: int = 0
    first_undecided_deadline: datetime | None = None
    # The operator's queues, read by an operator's check only (`rappel health`, which has their URLs from the
    # stack's outputs): None in the health_check function, which has no right to read them.
    planning_dead_letter_depth: int | None = None
    tally_failure_depth: int | None = None

    @property
    def oldest_due_lag_minutes(self) -> int:
        """Minutes the oldest pending due message has waited (0 when none is due)."""
        return _minutes(self.checked_at - self.oldest_due_at) if self.oldest_due_at else 0

    @property
    def failure_rate(self) -> float | None:
        """Failures over the reminders that ended or went out in the last hour: the sends, and the failures that
        were never sent (a sent reminder later reported undeliverable is one of the sends); None when there was
        neither."""
        failed_unsent = self.failures_last_hour - self.undelivered_last_hour
        outcomes = max(self.sent_last_hour + failed_unsent, self.failures_last_hour)
        return self.failures_last_hour / outcomes if outcomes > 0 else None

    @property
    def minutes_since_last_send(self) -> int | None:
        """Minutes since the provider last accepted a message (None: never)."""
        return _minutes(self.checked_at - self.last_send_at) if self.last_send_at else None

    @property
    def minutes_without_send_while_due(self) -> int:
        """How long work has been due with nothing sent: 0 when nothing is due.

        Bounded by the oldest due message's wait, so that a quiet night followed by one message due a minute
        ago is not a stall.
        """
        if self.pending_due_count == 0:
            return 0
        since = self.minutes_since_last_send
        lag = self.oldest_due_lag_minutes
        return lag if since is None else min(since, lag)


def findings_for(figures: HealthFigures, settings: Settings) -> tuple[str, ...]:
    """Every threshold `figures` cross, each as a sentence (pure: no I/O)."""
    return tuple(
        finding
        for check in (_backlog_findings, _sending_findings, _provider_findings, _operator_queue_findings)
        for finding in check(figures, settings)
    )


def configuration_advice(settings: Settings) -> tuple[str, ...]:
    """What the settings leave on the table, as sentences (pure). Advice, not findings: the scheduler works, and an
    alarm that stays on until the next deploy would hide the next real problem."""
    advice: list[str] = []
    # Each sender paces at a whole floor(rate / concurrency) per second; a concurrency that does not divide the
    # rate leaves the rest of the provider's limit unused for good.
    if settings.unused_rate_per_second >= 1:
        current = settings.SMS_SENDER_MAX_CONCURRENCY
        nearest = sorted(settings.whole_rate_concurrencies, key=lambda n: (abs(n - current), n))[:3]
        advice.append(
            f"The senders use {settings.senders_rate_per_second} of the {settings.SMS_RATE_LIMIT_PER_SECOND:g} SMS per"
            f" second SMS_RATE_LIMIT_PER_SECOND allows ({current} senders at {settings.sender_pace_per_second} each);"
            f" set SMS_SENDER_MAX_CONCURRENCY to a divisor of it ({', '.join(str(n) for n in sorted(nearest))})."
        )
    # The failures before the one that opens a circuit each spend an attempt of the message that met them.
    before_open = settings.SMS_CIRCUIT_FAILURES - 1
    if before_open > settings.SMS_MAX_RETRIES:
        advice.append(
            f"SMS_MAX_RETRIES ({settings.SMS_MAX_RETRIES}) runs out before SMS_CIRCUIT_FAILURES"
            f" ({settings.SMS_CIRCUIT_FAILURES}) failures in a row open a provider's circuit: a reminder alone in an"
            f" outage is dead-lettered on its own attempts; set SMS_MAX_RETRIES to at least {before_open}."
        )
    return tuple(advice)


def _backlog_findings(figures: HealthFigures, settings: Settings) -> list[str]:
    out: list[str] = []
    delay = settings.SMS_ALERT_PROCESSING_DELAY_MINUTES
    if figures.oldest_due_lag_minutes > delay:
        out.append(
            f"{_plural(figures.pending_due_count, 'message is', 'messages are')} due but not dispatched; "
            f"the oldest has waited {figures.oldest_due_lag_minutes} minutes (threshold {delay})."
        )
    # The backlog, not every pending message (a family's later reminders are pending from the day they are
    # planned); said once: a backlog that has waited too long is the finding above.
    elif figures.pending_due_count > settings.SMS_ALERT_PENDING_THRESHOLD:
        out.append(
            f"{_plural(figures.pending_due_count, 'message is', 'messages are')} due and waiting "
            f"(threshold {settings.SMS_ALERT_PENDING_THRESHOLD})."
        )
    return out


def _sending_findings(figures: HealthFigures, settings: Settings) -> list[str]:
    out: list[str] = []
    delay = settings.SMS_ALERT_PROCESSING_DELAY_MINUTES
    stalled = figures.minutes_without_send_while_due
    if stalled > delay and figures.last_send_at is None:
        out.append(
            f"No message has ever been sent while {_due(figures.pending_due_count)}; work has waited "
            f"{stalled} minutes (threshold {delay})."
        )
    elif stalled > delay:
        out.append(
            f"No message has been sent for {figures.minutes_since_last_send} minutes while "
            f"{_due(figures.pending_due_count)}; work has waited {stalled} minutes without a send "
            f"(threshold {delay})."
        )
    rate = figures.failure_rate
    if rate is not None and rate > settings.SMS_ALERT_FAILURE_RATE:
        out.append(
            f"In the last hour {_plural(figures.failures_last_hour, 'message', 'messages')} failed or "
            f"{'was' if figures.failures_last_hour == 1 else 'were'} dead-lettered against "
            f"{figures.sent_last_hour} sent: a failure rate of {rate:.0%} "
            f"(threshold {settings.SMS_ALERT_FAILURE_RATE:.0%})."
        )
    if figures.dead_letter_depth > 0:
        out.append(
            f"{_plural(figures.dead_letter_depth, 'message waits', 'messages wait')} in the dead letter queue; "
            "inspect them and redrive (`rappel redrive`)."
        )
    if figures.undecided_count > 0 and figures.first_undecided_deadline is not None:
        out.append(
            f"{_plural(figures.undecided_count, 'ambiguous dead letter waits', 'ambiguous dead letters wait')} for an"
            " operator's decision (its SMS may have gone out): see `rappel messages --status dead_letter`, then"
            " `rappel resend ID` to send it again or `rappel assume-sent ID` to take it as sent; the first deadline"
            f" is {_when(figures.first_undecided_deadline)}."
        )
    return out


def _operator_queue_findings(figures: HealthFigures, settings: Settings) -> list[str]:
    out: list[str] = []
    if figures.planning_dead_letter_depth:
        out.append(
            f"{_plural(figures.planning_dead_letter_depth, 'clinic event waits', 'clinic events wait')} in the planning"
            " dead letter queue: fix what failed (plan_reminders' logs), then `rappel replay-events`."
        )
    if figures.tally_failure_depth:
        out.append(
            f"{_plural(figures.tally_failure_depth, 'statistics batch waits', 'statistics batches wait')} in the tally"
            " failure queue: fix what failed (tally_changes' logs), then `rappel retally` within the streams' 24 hours."
        )
    return out


def _provider_findings(figures: HealthFigures, settings: Settings) -> list[str]:
    out: list[str] = []
    for circuit in figures.circuits:
        probe = _when(circuit.retry_at) if circuit.retry_at else "once one is due"
        what = "held" if circuit.kind is CircuitKind.HOLD else "paused by an outage"
        since = f" since {_when(circuit.opened_at)}" if circuit.opened_at else ""
        out.append(
            f"Sending to {circuit.provider} is {what}{since}; next probe at {probe}"
            + (f": {circuit.reason}." if circuit.reason else ".")
        )
    if figures.balance_error is not None:
        out.append(f"Could not read the provider balance: {figures.balance_error}.")
    balance = figures.balance
    if balance is None:
        return out
    units = balance.available_units
    if units is not None and units < settings.SMS_ALERT_BALANCE_UNITS:
        out.append(
            f"The provider balance is {_plural(units, 'SMS unit', 'SMS units')} "
            f"(threshold {settings.SMS_ALERT_BALANCE_UNITS}); buy a bundle."
        )
    return out + _bundle_findings(balance, figures.checked_at)


def _bundle_findings(balance: Balance, now: datetime) -> list[str]:
    if balance.expires_at is None:
        if balance.status is not None and balance.status.upper() != "ACTIVE":
            return [f"The provider bundle is {balance.status}."]
        return []
    if balance.expires_at <= now:
        return [f"The provider bundle expired on {_when(balance.expires_at)}."]
    if balance.expires_at - now <= BUNDLE_EXPIRY_WARNING:
        days = (balance.expires_at - now).days
        return [
            f"The provider bundle expires on {_when(balance.expires_at)}, in "
            f"{_plural(days, 'day', 'days') if days else 'less than a day'}."
        ]
    return []


@dataclass(frozen=True)
class HealthReport:
    """The figures and what is wrong with them; healthy when nothing is."""

    figures: HealthFigures
    findings: tuple[str, ...]
    advice: tuple[str, ...] = ()  # configuration_advice: reported, never unhealthy

    @property
    def healthy(self) -> bool:
        """True when no threshold is crossed."""
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (times as UTC ISO-8601)."""
        f = self.figures
        balance = f.balance
        return {
            "healthy": self.healthy,
            "checked_at": store.iso(f.checked_at),
            "findings": list(self.findings),
            "advice": list(self.advice),
            "pending_count": f.pending_count,
            "queued_count": f.queued_count,
            "pending_due_count": f.pending_due_count,
            "oldest_due_at": store.iso(f.oldest_due_at) if f.oldest_due_at else None,
            "oldest_due_lag_minutes": f.oldest_due_lag_minutes,
            "sent_last_hour": f.sent_last_hour,
            "failures_last_hour": f.failures_last_hour,
            "failure_rate": round(f.failure_rate, 6) if f.failure_rate is not None else None,
            "last_send_at": store.iso(f.last_send_at) if f.last_send_at else None,
            "minutes_since_last_send": f.minutes_since_last_send,
            "minutes_without_send_while_due": f.minutes_without_send_while_due,
            "dead_letter_depth": f.dead_letter_depth,
            "planning_dead_letter_depth": f.planning_dead_letter_depth,
            "tally_failure_depth": f.tally_failure_depth,
            "undecided_count": f.undecided_count,
            "first_undecided_deadline": (store.iso(f.first_undecided_deadline) if f.first_undecided_deadline else None),
            "circuits": [
                {
                    "provider": c.provider,
                    "kind": c.kind.value if c.kind else None,
                    "opened_at": store.iso(c.opened_at) if c.opened_at else None,
                    "next_probe_at": store.iso(c.retry_at) if c.retry_at else None,
                    "reason": c.reason,
                }
                for c in f.circuits
            ],
            "provider_balance_units": balance.available_units if balance else None,
            "provider_balance_expires_at": store.iso(balance.expires_at) if balance and balance.expires_at else None,
            "provider_balance_status": balance.status if balance else None,
            "provider_balance_error": f.balance_error,
        }


def _last_hour(settings: Settings, now: datetime) -> tuple[int, int, int]:
    """Sent, failed (or dead-lettered) and, of those failures, undelivered after a send, over the last hour."""
    # Hour buckets overlapping the last hour: between 60 and 120 minutes of outcomes, never less than an hour.
    buckets = hour_buckets("hour", now)
    counters_by_day = {day: store.read_counters(day) for day in dict.fromkeys(day for day, _ in buckets)}
    totals = merge(sum_counters(counters_by_day, buckets).values())
    sent = round(totals.get(Status.SENT.value, 0.0))
    failures = round(sum(totals.get(name, 0.0) for name in FAILURE_COUNTERS))
    return sent, failures, round(totals.get(UNDELIVERED, 0.0))


def _read_balance(settings: Settings) -> tuple[Balance | None, str | None]:
    if ProviderName.ORANGE not in settings.providers:
        # Kannel keeps no balance, and building its adapter reads secrets this function is not granted.
        return None, None
    try:
        return provider_for(settings, ProviderName.ORANGE).balance(), None
    except Exception as exc:  # whatever breaks the balance read is reported; the check goes on
        logger.warning("could not read the provider balance", extra={"error": str(exc), "kind": type(exc).__name__})
        return None, str(exc) or type(exc).__name__


def measure_health(settings: Settings, now: datetime, *, operator: bool = False) -> HealthFigures:
    """Read every figure from DynamoDB, SQS and the provider; with `operator`, the depths of the operator's queues
    too (the health_check function has no right to read them, and their own SQS alarms watch them)."""
    store.bind(settings)
    # One read of the next day's pending reminders gives both figures: those due by now are the backlog.
    pending = store.pending_until(settings.DUE_INDEX_SHARDS, now + PENDING_HORIZON)
    due = [due_at for _, due_at in pending if due_at <= now]
    sent, failures, undelivered = _last_hour(settings, now)
    balance, balance_error = _read_balance(settings)
    undecided, first_deadline = store.undecided_dead_letters(now)
    return HealthFigures(
        checked_at=now,
        pending_count=len(pending),
        queued_count=queue.depth(settings.SEND_QUEUE_URL, settings),
        pending_due_count=len(due),
        oldest_due_at=min(due, default=None),
        sent_last_hour=sent,
        failures_last_hour=failures,
        undelivered_last_hour=undelivered,
        last_send_at=provider_state.last_send(),
        dead_letter_depth=queue.depth(settings.DEAD_LETTER_QUEUE_URL, settings),
        circuits=provider_state.open_circuits(settings, now, fresh=True),
        balance=balance,
        balance_error=balance_error,
        undecided_count=undecided,
        first_undecided_deadline=first_deadline,
        planning_dead_letter_depth=_operator_depth(settings.PLANNING_DEAD_LETTER_QUEUE_URL, settings, operator),
        tally_failure_depth=_operator_depth(settings.TALLY_FAILURE_QUEUE_URL, settings, operator),
    )


def _operator_depth(queue_url: str, settings: Settings, operator: bool) -> int | None:
    return queue.depth(queue_url, settings) if operator and queue_url else None


def check_health(settings: Settings, now: datetime, *, operator: bool = False) -> HealthReport:
    """The health of the scheduler at `now`: figures and findings (no metrics; see `run_health_check`). `operator`:
    an operator's check (`rappel health`), which also reads the queues only operators handle."""
    figures = measure_health(settings, now, operator=operator)
    return HealthReport(figures, findings_for(figures, settings), configuration_advice(settings))


def metric_values(report: HealthReport) -> Mapping[MetricName, float]:
    """The health metrics of a report; the balance only when the provider reported units."""
    f = report.figures
    values: dict[MetricName, float] = {
        MetricName.HEALTH_PENDING_COUNT: f.pending_count,
        MetricName.HEALTH_PENDING_DUE_COUNT: f.pending_due_count,
        MetricName.HEALTH_OLDEST_DUE_LAG_MINUTES: f.oldest_due_lag_minutes,
        MetricName.HEALTH_FAILURES_LAST_HOUR: f.failures_last_hour,
        MetricName.HEALTH_FAILURE_RATE: f.failure_rate or 0.0,
        MetricName.HEALTH_MINUTES_SINCE_LAST_SEND: f.minutes_without_send_while_due,
        MetricName.HEALTH_DEAD_LETTER_DEPTH: f.dead_letter_depth,
        MetricName.HEALTH_PROVIDER_HOLD: 1 if any(c.kind is CircuitKind.HOLD for c in f.circuits) else 0,
        MetricName.HEALTH_CIRCUITS_OPEN: len(f.circuits),
        MetricName.HEALTH_UNHEALTHY: 0 if report.healthy else 1,
    }
    # No data, not zero, when the balance is unknown (Kannel has none; a failed read is already a finding):
    # a zero would fire the low-balance alarm for the wrong reason.
    if f.balance is not None and f.balance.available_units is not None:
        values[MetricName.HEALTH_PROVIDER_BALANCE_UNITS] = f.balance.available_units
    return values


def run_health_check(settings: Settings) -> HealthReport:
    """The scheduled run: check now, record every figure as a metric (service dimension only), log the result."""
    report = check_health(settings, clock.now())
    for name, value in metric_values(report).items():
        measure(name, value)
    if not report.healthy:
        logger.warning("health check found problems", extra={"health": report.as_dict()})
    elif report.advice:
        logger.warning("health check passed, with advice on the settings", extra={"health": report.as_dict()})
    else:
        logger.info("health check passed", extra={"health": report.as_dict()})
    return report
