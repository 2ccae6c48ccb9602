"""dispatch_due: claim the messages that are due and put them on the send queue, no more than can be sent.

Claims are conditional writes on the message's version, so overlapping dispatchers (or a stale read of the
eventually consistent index) never claim a message twice. A claim is a lease: a claimed message stays in
the `due` index with its due time moved to the lease's end, so one that was claimed but never enqueued
(a crash between the two writes) comes back by itself when the lease runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from core import clock, followup, provider_state, queue, store
from core.lifecycle import Status
from core.metric_names import MetricName
from core.observability import count, logger, measure
from core.queue import QueuedMessage, QueuedSms
from core.settings import Settings
from core.store import Change, Guard, MessageRecord, iso, parse_iso
from core.timing import ReminderType
from core.wanted import is_confirmation


class ClaimOutcome(StrEnum):
    """What one claim of a due message did."""

    CLAIMED = "claimed"
    DEAD_LETTER = "dead_letter"  # re-claimed too often: something downstream keeps crashing on it
    LOST = "lost"  # another dispatcher, or a change, got there first


@dataclass
class DispatchResult:
    """What one dispatcher run did."""

    capacity: int = 0
    claimed: int = 0
    enqueued: int = 0
    expired: int = 0
    dead_lettered: int = 0
    lost_races: int = 0
    not_enqueued: int = 0
    held: bool = False
    follow_ups: int = 0  # appointment states the follow-up pass looked at (core.followup)


def dispatch_due(settings: Settings) -> DispatchResult:
    """One dispatcher run: expire what is too late, claim the most urgent due messages, enqueue them."""
    store.bind(settings)
    now = clock.now()
    result = DispatchResult()
    result.capacity = _capacity(settings, now)
    result.held = result.capacity == 0
    candidates: list[MessageRecord] = []
    for shard in range(settings.DUE_INDEX_SHARDS):
        candidates += store.due_in_shard(f"DUE#{shard}", now, limit=max(result.capacity, 1) + 50)
    live: list[MessageRecord] = []
    for message in candidates:
        if parse_iso(message.deadline) <= now:
            if _expire(message, now, settings):
                result.expired += 1
        else:
            live.append(message)
    live.sort(key=lambda m: (_urgency(m), m.due_at or ""))
    claimed: list[tuple[MessageRecord, QueuedMessage]] = []
    for message in live[: result.capacity]:
        outcome = _claim(message, now, settings)
        if outcome is ClaimOutcome.CLAIMED:
            claimed.append((message, QueuedMessage(message.message_id, int(message.version) + 1)))
            lag = (now - parse_iso(message.scheduled_at)).total_seconds()
            measure(MetricName.DISPATCH_LAG_SECONDS, max(lag, 0.0))
        elif outcome is ClaimOutcome.DEAD_LETTER:
            result.dead_lettered += 1
        else:
            result.lost_races += 1
    result.claimed = len(claimed)
    records = by_phone(claimed) if settings.SMS_GROUP_BY_PHONE else [item for _, item in claimed]
    failed = queue.enqueue(records, settings)
    result.not_enqueued = sum(len(f.reminders) if isinstance(f, QueuedSms) else 1 for f in failed)
    result.enqueued = len(claimed) - result.not_enqueued
    count(MetricName.MESSAGES_DISPATCHED, result.enqueued)
    if failed:
        logger.error("messages claimed but not enqueued; their lease brings them back", extra={"count": len(failed)})
    # Families to call: after the claims, so that a slow pass never delays a reminder.
    result.follow_ups = followup.run_due(settings, now).looked_at
    logger.info("dispatch run", extra=result.__dict__)
    return result


def _capacity(settings: Settings, now: datetime) -> int:
    """How many reminders to claim now: what the provider can send before the next run, less what is queued; one
    (the probe) while every provider's circuit is open and a probe is due; none while no provider can take any."""
    route = provider_state.route(settings, now)
    if route.provider is None:
        logger.warning("no provider can take a request: nothing dispatched", extra={"until": str(route.paused_until)})
        return 0
    if route.probe and provider_state.route(settings, now, skip=(str(route.provider),)).provider is None:
        return 1  # only the probe can go: the next provider in the failover order cannot take traffic either
    budget = int(settings.SMS_RATE_LIMIT_PER_SECOND * settings.SMS_PROCESSING_INTERVAL_MINUTES * 60)
    return max(0, budget - queue.depth(settings.SEND_QUEUE_URL, settings))


def _urgency(message: MessageRecord) -> int:
    """Lower goes first: a reply's confirmation (the family is waiting for it), then 1-day, overdue, 7-day."""
    return -1 if is_confirmation(message) else ReminderType(message.reminder_type).urgency


# More reminders for one phone in one slot than any family has; a register error beyond it still gets sent.
MAX_REMINDERS_PER_RECORD = 20


def by_phone(claimed: list[tuple[MessageRecord, QueuedMessage]]) -> list[QueuedMessage | QueuedSms]:
    """One send queue record per phone, reminder type and due date: reminders that would reach one phone in this
    send slot go out as one SMS (siblings, or one child booked once per vaccine). Order kept, by the first member."""
    groups: dict[tuple[str, str, str], list[QueuedMessage]] = {}
    records: list[QueuedMessage | QueuedSms | list[QueuedMessage]] = []
    for message, item in claimed:
        if not message.recipient or is_confirmation(message):
            records.append(item)  # planned before recipients were recorded, or a reply's confirmation: on its own
            continue
        key = (message.recipient, message.reminder_type, message.due_date)
        if key not in groups or len(groups[key]) == MAX_REMINDERS_PER_RECORD:
            groups[key] = []
            records.append(groups[key])
        groups[key].append(item)
    out: list[QueuedMessage | QueuedSms] = []
    for record in records:
        if isinstance(record, list):
            out.append(record[0] if len(record) == 1 else QueuedSms(tuple(record)))
        else:
            out.append(record)
    return out


def _expire(message: MessageRecord, now: datetime, settings: Settings) -> bool:
    why = "deadline passed before it could be sent"
    if message.state is Status.DEAD_LETTER:
        why = f"dead letter not redriven before its deadline ({message.last_error})"
    change = Change(
        target=Status.EXPIRED,
        sources=frozenset({Status.PENDING, Status.QUEUED, Status.DEAD_LETTER}),
        set={"last_error": why},
        guard=Guard.VERSION,
    )
    done = store.transition(message, change, at=now, settings=settings)
    if done:
        count(
            MetricName.REMINDERS_EXPIRED, reminder_type=message.reminder_type, provider=settings.primary_provider.value
        )
    return done


def _claim(message: MessageRecord, now: datetime, settings: Settings) -> ClaimOutcome:
    if message.state is Status.QUEUED and int(message.dispatches) >= settings.SMS_MAX_DISPATCHES:
        change = Change(
            target=Status.DEAD_LETTER,
            sources=frozenset({Status.QUEUED}),
            set={"last_error": f"lease expired {int(message.dispatches)} times without a send"},
            guard=Guard.VERSION | Guard.DUE,
        )
        # DLQ copy first, status second: a spare copy is dropped as stale on redrive; a missing one strands it.
        queue.put_dead_letter(QueuedMessage(message.message_id, int(message.version) + 1), settings)
        if not store.transition(message, change, at=now, settings=settings):
            return ClaimOutcome.LOST
        count(
            MetricName.SMS_DEAD_LETTERED, reminder_type=message.reminder_type, provider=settings.primary_provider.value
        )
        return ClaimOutcome.DEAD_LETTER
    lease_end = now + timedelta(minutes=settings.SMS_CLAIM_LEASE_MINUTES)
    change = Change(
        target=Status.QUEUED,
        sources=frozenset({Status.PENDING, Status.QUEUED}),
        set={
            "queued_at": iso(now),
            "due_at": iso(lease_end),
            "due_shard": store.shard_of(message.message_id, settings.DUE_INDEX_SHARDS),
            # Claims since the message last left `pending`: only lease expiries count towards SMS_MAX_DISPATCHES,
            # not the claims of earlier attempts that ended in a retry or a deferral.
            "dispatches": int(message.dispatches) + 1 if message.state is Status.QUEUED else 1,
        },
        guard=Guard.VERSION | Guard.DUE,
        reason="claimed again: its lease ran out before a send" if message.state is Status.QUEUED else "claimed",
    )
    return ClaimOutcome.CLAIMED if store.transition(message, change, at=now, settings=settings) else ClaimOutcome.LOST
