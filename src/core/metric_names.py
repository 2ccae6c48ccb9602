"""Every CloudWatch metric Rappel emits: one list, read by the code and cross-checked against template.yaml.

Metrics are Powertools EMF in namespace `Rappel` (`POWERTOOLS_METRICS_NAMESPACE`). Every metric carries the
dimension `service=rappel` (`POWERTOOLS_SERVICE_NAME`, added by Powertools as a default dimension). The
metrics in `PER_TYPE_AND_PROVIDER` also carry `reminder_type` (one of `REMINDER_TYPES`) and `provider` (one of
`PROVIDERS`), in that one dimension set, so that the dashboard's
`SEARCH('{Rappel,provider,reminder_type,service} MetricName="..."', ...)` finds them: emit them with
Powertools `single_metric` / `EphemeralMetrics` carrying exactly those dimensions. The others carry `service`
only; the CloudWatch alarms in template.yaml match on that exact dimension set, so adding a dimension to one
of them silently blinds its alarm. Never add a phone number, a patient id or a message id as a dimension.

Health figures (`HEALTH`) are emitted by health_check on every run, also when they are zero: the alarms on
them treat a missing data point as "health_check did not run" (see template.yaml).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

NAMESPACE: Final[str] = "Rappel"
SERVICE: Final[str] = "rappel"


class Dimension(StrEnum):
    """Dimension names; `SERVICE` is on every metric."""

    SERVICE = "service"
    REMINDER_TYPE = "reminder_type"
    PROVIDER = "provider"


REMINDER_TYPES: Final[tuple[str, ...]] = ("7_day_reminder", "1_day_reminder", "overdue_reminder")
PROVIDERS: Final[tuple[str, ...]] = ("orange", "kannel")


class MetricName(StrEnum):
    """CloudWatch metric names (the enum value is the name in CloudWatch)."""

    # Per reminder type and provider.
    REMINDERS_PLANNED = "RemindersPlanned"
    SMS_SENT = "SmsSent"  # reminders sent
    SMS_ACCEPTED = "SmsAccepted"  # SMS the provider accepted: one may carry several reminders for one phone
    SMS_DELIVERED = "SmsDelivered"
    SMS_FAILED = "SmsFailed"
    SMS_RETRIED = "SmsRetried"
    SMS_DEAD_LETTERED = "SmsDeadLettered"
    REMINDERS_EXPIRED = "RemindersExpired"
    REMINDERS_CANCELLED = "RemindersCancelled"
    AMBIGUOUS_SENDS = "AmbiguousSends"
    DELIVERY_LATENCY_SECONDS = "DeliveryLatencySeconds"
    SEND_LATENESS_SECONDS = "SendLatenessSeconds"

    # Service only.
    PROVIDER_THROTTLED = "ProviderThrottled"
    DISPATCH_LAG_SECONDS = "DispatchLagSeconds"
    MESSAGES_DISPATCHED = "MessagesDispatched"
    EVENTS_REJECTED = "EventsRejected"
    RECEIPTS_UNKNOWN = "ReceiptsUnknown"
    RECEIPTS_REJECTED = "ReceiptsRejected"
    REPLIES_OPTED_OUT = "RepliesOptedOut"  # replies that stopped a number (one per change)
    REPLIES_OPTED_IN = "RepliesOptedIn"  # replies that started a number again (one per change)
    REPLIES_UNKNOWN = "RepliesUnknown"  # replies that changed nothing: no keyword, or an unknown sender
    FAMILIES_REACHED = "FamiliesReached"  # appointments whose first reminder was delivered (once each)
    DOSES_GIVEN_REACHED = "DosesGivenReached"  # doses given whose family a reminder had reached
    DOSES_GIVEN_NOT_REACHED = "DosesGivenNotReached"  # doses given whose family no reminder reached
    FOLLOW_UPS_OPENED = "FollowUpsOpened"  # families to call (FollowUpNeeded), one at a time per appointment
    FOLLOW_UPS_CLOSED = "FollowUpsClosed"  # follow-ups closed by the dose given or the appointment cancelled
    FOLLOW_UP_ERRORS = (
        "FollowUpErrors"  # states the follow-up pass could not handle or whose event it could not publish
    )

    # Health figures (service only), emitted by health_check on every run.
    HEALTH_PENDING_COUNT = "HealthPendingCount"  # pending messages due within statistics.PENDING_HORIZON (24 h)
    HEALTH_PENDING_DUE_COUNT = "HealthPendingDueCount"  # the backlog: pending and due, SMS_ALERT_PENDING_THRESHOLD's
    HEALTH_OLDEST_DUE_LAG_MINUTES = "HealthOldestDueLagMinutes"
    HEALTH_FAILURES_LAST_HOUR = "HealthFailuresLastHour"
    HEALTH_FAILURE_RATE = "HealthFailureRate"
    HEALTH_MINUTES_SINCE_LAST_SEND = "HealthMinutesSinceLastSend"
    HEALTH_DEAD_LETTER_DEPTH = "HealthDeadLetterDepth"
    HEALTH_PROVIDER_HOLD = "HealthProviderHold"
    HEALTH_CIRCUITS_OPEN = "HealthCircuitsOpen"  # providers whose circuit is open (outage or hold)
    HEALTH_PROVIDER_BALANCE_UNITS = "HealthProviderBalanceUnits"
    HEALTH_UNHEALTHY = "HealthUnhealthy"


PER_TYPE_AND_PROVIDER: Final[frozenset[MetricName]] = frozenset(
    {
        MetricName.REMINDERS_PLANNED,
        MetricName.SMS_SENT,
        MetricName.SMS_ACCEPTED,
        MetricName.SMS_DELIVERED,
        MetricName.SMS_FAILED,
        MetricName.SMS_RETRIED,
        MetricName.SMS_DEAD_LETTERED,
        MetricName.REMINDERS_EXPIRED,
        MetricName.REMINDERS_CANCELLED,
        MetricName.AMBIGUOUS_SENDS,
        MetricName.DELIVERY_LATENCY_SECONDS,
        MetricName.SEND_LATENESS_SECONDS,
    }
)

HEALTH: Final[frozenset[MetricName]] = frozenset(
    {
        MetricName.HEALTH_PENDING_COUNT,
        MetricName.HEALTH_PENDING_DUE_COUNT,
        MetricName.HEALTH_OLDEST_DUE_LAG_MINUTES,
        MetricName.HEALTH_FAILURES_LAST_HOUR,
        MetricName.HEALTH_FAILURE_RATE,
        MetricName.HEALTH_MINUTES_SINCE_LAST_SEND,
        MetricName.HEALTH_DEAD_LETTER_DEPTH,
        MetricName.HEALTH_PROVIDER_HOLD,
        MetricName.HEALTH_CIRCUITS_OPEN,
        MetricName.HEALTH_PROVIDER_BALANCE_UNITS,
        MetricName.HEALTH_UNHEALTHY,
    }
)

SERVICE_ONLY: Final[frozenset[MetricName]] = frozenset(MetricName) - PER_TYPE_AND_PROVIDER


def dimensions_of(name: MetricName) -> tuple[Dimension, ...]:
    """The dimension names `name` is emitted with (the alarms and the dashboard rely on exactly these)."""
    if name in PER_TYPE_AND_PROVIDER:
        return (Dimension.SERVICE, Dimension.REMINDER_TYPE, Dimension.PROVIDER)
    return (Dimension.SERVICE,)


# Units as Powertools' `MetricUnit` values (core does not import Powertools).
UNITS: Final[dict[MetricName, str]] = {
    **dict.fromkeys(MetricName, "Count"),
    MetricName.DELIVERY_LATENCY_SECONDS: "Seconds",
    MetricName.SEND_LATENESS_SECONDS: "Seconds",
    MetricName.DISPATCH_LAG_SECONDS: "Seconds",
    MetricName.HEALTH_OLDEST_DUE_LAG_MINUTES: "None",
    MetricName.HEALTH_FAILURE_RATE: "None",
    MetricName.HEALTH_MINUTES_SINCE_LAST_SEND: "None",
    MetricName.HEALTH_PROVIDER_HOLD: "None",
    MetricName.HEALTH_CIRCUITS_OPEN: "None",
    MetricName.HEALTH_PROVIDER_BALANCE_UNITS: "None",
    MetricName.HEALTH_UNHEALTHY: "None",
}
