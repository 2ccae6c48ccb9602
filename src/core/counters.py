"""Statistics counters, kept from each status change of a message (never computed by scanning messages).

The tally (`core.tally`) reads the changes from the messages table's stream and adds what each moves. A counter
lives in the ops table under `COUNTERS#<UTC day>` with key `<hour>#<reminder type>#<name>` (the store
decides which item holds it: `store.add_to_counters`).
Names are the statuses a message reaches (each reached once), `retried`, and for lateness and delivery time
a sum and a histogram (`lateness_le_<bound>` / `delivery_le_<bound>`) from which p95 is read back.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from core.lifecycle import Status

# Histogram upper bounds in seconds; the last bucket is open.
BOUNDS: tuple[int, ...] = (
    1,
    2,
    5,
    10,
    20,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    14400,
    28800,
    43200,
    86400,
    172800,
    259200,
)
OPEN = "inf"

COUNTED: frozenset[Status] = frozenset(
    {Status.PENDING, Status.SENT, Status.DELIVERED, Status.FAILED, Status.DEAD_LETTER, Status.EXPIRED, Status.CANCELLED}
)
PLANNED = "planned"
RETRIED = "retried"
# Accepted SMS, apart from reminders sent: each reminder an SMS carried adds its share (1 / `sms_reminders`), so
# the SMS counts once in all however its reminders' writes are split by a crash, and never twice on a replay.
SMS = "sms"
# Reminders sent through each provider (failover): `sent_via_<provider>`.
SENT_VIA = "sent_via_"
# Sent reminders reported undeliverable (sent -> failed, net of late deliveries): a failure that is one of the sends,
# which a failure rate must not count as one more outcome.
UNDELIVERED = "undelivered"


def bucket_label(seconds: float) -> str:
    """The histogram bucket of a duration."""
    index = bisect.bisect_left(BOUNDS, seconds)
    return str(BOUNDS[index]) if index < len(BOUNDS) else OPEN


def counter_key(at: datetime, reminder_type: str, name: str) -> tuple[str, str]:
    """(day, key) of a counter for an event at `at` (UTC)."""
    return at.strftime("%Y-%m-%d"), f"{at.strftime('%H')}#{reminder_type}#{name}"


# Moves that correct an earlier ending, whose count they take back: a late DeliveredToTerminal after
# DeliveryImpossible; a reminder whose SMS had gone out before its cancellation was written; an ambiguous dead letter
# whose receipt came.
CORRECTIONS: frozenset[tuple[str, Status]] = frozenset(
    {
        (Status.FAILED.value, Status.DELIVERED),
        (Status.CANCELLED.value, Status.SENT),
        (Status.DEAD_LETTER.value, Status.SENT),
    }
)


def _to_pending(source: str, values: Mapping[str, Any]) -> dict[str, float]:
    """What a move to pending counts. A creation is planned (as `RemindersPlanned` counts it); a revival takes its
    cancellation back; a failed attempt is a retry (a deferral for quiet hours or a provider hold, with no attempt
    spent, is not); a redrive from the DLQ is no new reminder (its dead letter stays counted, as the event it was)."""
    if not source:
        return {PLANNED: 1}
    if source == Status.CANCELLED.value:
        return {source: -1}
    if source == Status.QUEUED.value and "attempts" in values:
        return {RETRIED: 1}
    return {}


def _taken_back(source: str, target: Status) -> dict[str, float]:
    """What a move counts besides its target: a correction takes back the ending it corrects, and a sent reminder
    reported undeliverable is `undelivered` (until a late delivery takes that back too)."""
    out: dict[str, float] = {source: -1} if (source, target) in CORRECTIONS else {}
    if (source, target) == (Status.SENT.value, Status.FAILED):
        out[UNDELIVERED] = 1
    elif (source, target) == (Status.FAILED.value, Status.DELIVERED):
        out[UNDELIVERED] = -1
    return out


def transition_counts(
    reminder_type: str,
    source: str,
    target: Status,
    at: datetime,
    values: Mapping[str, Any],
    scheduled_at: datetime,
    sent_at: datetime | None,
    source_at: datetime | None = None,
) -> dict[tuple[str, str], float]:
    """The counter increments that one move of a message causes, at `at`. What a correction takes back goes in the
    hour its source status was reached (`source_at`, when known), where it was counted: a late delivery the day after
    its failure would otherwise leave that day with a failure never counted back, and take it from the next."""
    out: dict[tuple[str, str], float] = {}

    def add(name: str, amount: float = 1, when: datetime = at) -> None:
        key = counter_key(when, reminder_type, name)
        out[key] = out.get(key, 0) + amount

    if target is Status.PENDING:
        for name, amount in _to_pending(source, values).items():
            add(name, amount, source_at or at if name == source else at)
        return out
    if target not in COUNTED or target.value == source:
        return out
    add(target.value)
    for name, amount in _taken_back(source, target).items():
        add(name, amount, source_at or at)
    if target is Status.SENT:
        add(SMS, 1 / int(values.get("sms_reminders") or 1))
        if values.get("provider"):
            add(f"{SENT_VIA}{values['provider']}")
        lateness = max(0.0, (at - scheduled_at).total_seconds())
        add("lateness_sum", lateness)
        add(f"lateness_le_{bucket_label(lateness)}")
    if target is Status.DELIVERED and sent_at is not None:
        latency = max(0.0, (at - sent_at).total_seconds())
        add("delivery_sum", latency)
        add(f"delivery_le_{bucket_label(latency)}")
    return out


def percentile_from_histogram(histogram: Mapping[str, float], fraction: float) -> float | None:
    """The upper bound of the bucket holding the `fraction` quantile (an over-estimate by at most one bucket)."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = fraction * total
    seen = 0.0
    for label in [str(b) for b in BOUNDS] + [OPEN]:
        seen += histogram.get(label, 0)
        if seen >= rank:
            return float("inf") if label == OPEN else float(label)
    return float("inf")
