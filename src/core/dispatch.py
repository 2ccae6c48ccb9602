"""dispatch_due: put the messages that are due on the send queue, no more than can be sent, and claim them.

Enqueue first, claim second. A claim is a conditional write on the message's version (overlapping dispatchers, or
a stale read of the eventually consistent index, never claim a message twice) that takes it out of the `due` index.
A crash between the two leaves the message pending and due: the next run enqueues it again, and whichever record
the sender meets first claims it (`sending`), the other then finds it claimed or settled and is dropped. No claim
lease is needed, so a claim moves no index key (one index write, not two) and the send's own write none at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from core import clock, provider_state, queue, store
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
    LOST = "lost"  # another dispatcher, the sender, or a change got there first


@dataclass
class DispatchResult:
    """What one dispatcher run did."""

    capacity: int = 0
    claimed: int = 0
    enqueued: int = 0
    expired: int = 0
    lost_races: int = 0
    not_enqueued: int = 0
    held: bool = False


def dispatch_due(settings: Settings) -> DispatchResult:
    """One dispatcher run: expire what is too late, claim the most urgent due messages, enqueue them."""
    store.bind(settings)
    now = clock.now()
    result = DispatchResult()
    result.capacity, probing = _capacity(settings, now)
    result.held = result.capacity == 0
    live: list[MessageRecord] = []
    unreadable: list[str] = []
    expiring = 0
    for message in _candidates(settings.DUE_INDEX_SHARDS, now, result.capacity, unreadable):
        if parse_iso(message.deadline) <= now:
            expiring += 1
            if expiring <= EXPIRIES_PER_RUN and _expire(message, now, settings):
                result.expired += 1
        elif message.state is Status.PENDING:  # a dead letter waits here for its deadline; only pending is claimed
            live.append(message)
    chosen = within_capacity(dispatch_order(live, probing), result.capacity, settings.SMS_GROUP_BY_PHONE)
    # Each record names the version its claim will give the message and the claim's mark: the sender acts on that
    # claim alone.
    planned = [(m, QueuedMessage(m.message_id, int(m.version) + 1, iso(now))) for m in chosen]
    records = by_phone(planned) if settings.SMS_GROUP_BY_PHONE else [item for _, item in planned]
    failed = queue.enqueue(records, settings)
    unsent = {claim.message_id for record in failed for claim in queue.claims_of(record)}
    result.not_enqueued = len(unsent)
    for message in chosen:
        if message.message_id in unsent:
            continue  # not claimed: still pending and due, the next run enqueues it again
        if _claim(message, now, settings) is ClaimOutcome.CLAIMED:
            result.claimed += 1
            lag = (now - parse_iso(message.scheduled_at)).total_seconds()
            measure(MetricName.DISPATCH_LAG_SECONDS, max(lag, 0.0))
        else:
            result.lost_races += 1  # its record is dropped by the sender as stale
    result.enqueued = len(chosen) - result.not_enqueued
    count(MetricName.MESSAGES_DISPATCHED, result.enqueued)
    if failed:
        logger.error("messages not enqueued; left pending for the next run", extra={"count": len(unsent)})
    logger.info("dispatch run", extra=result.__dict__)
    if unreadable:
        raise UnreadableDueMessages(unreadable)
    return result


class UnreadableDueMessages(Exception):
    """Due messages this version cannot read were left where they are, the others dispatched: the run fails after
    its work, so that the function's error alarm calls someone (each one is logged by its id)."""

    def __init__(self, message_ids: list[str]) -> None:
        shown = ", ".join(message_ids[:5]) + (", …" if len(message_ids) > 5 else "")
        super().__init__(f"{len(message_ids)} due message(s) this version cannot read, left in place: {shown}")


# Expiries one run makes (two writes each, about 20 s of its minute at most): a backlog past its deadline (a campaign
# held past a cohort's deadline) is expired a share a run, and the run still claims what can go; none of it can be
# sent meanwhile.
EXPIRIES_PER_RUN: Final = 1_000
# How far a shard is read, in windows of (capacity + 50), for reminders more urgent than the 7-day ones ahead of them.
DUE_READ_WINDOWS = 10


def _candidates(shards: int, now: datetime, capacity: int, unreadable: list[str]) -> Iterator[MessageRecord]:
    """The due messages to choose from (and to expire), shard by shard, earliest first.

    A shard gives its first window (capacity + 50) whole. A backlog may hold more 7-day reminders than a window
    (yesterday's, within their 48 h) ahead of today's 1-day ones, so while a shard has given fewer than `capacity`
    more urgent ones it is read on, up to DUE_READ_WINDOWS windows, for those and for any past its deadline (to
    expire); the 7-day ones beyond the first window are left for a later run. Those this version cannot read are
    left where they are, counted in the windows (a rollback may leave thousands, never expired), and their ids go to
    `unreadable`.
    """
    window = max(capacity, 1) + 50
    for shard in range(shards):
        urgent = 0
        for n, message in enumerate(store.due_in_shard(f"DUE#{shard}", now, page_size=window)):
            if n >= window and (urgent >= capacity or n >= window * DUE_READ_WINDOWS):
                break
            if _unreadable(message, unreadable):
                continue
            is_urgent = _urgency(message) < ReminderType.SEVEN_DAY.urgency
            urgent += is_urgent
            if n < window or is_urgent or parse_iso(message.deadline) <= now:
                yield message


# Unreadable due messages logged one by one in a run; the run's error gives how many there were.
UNREADABLE_LOGGED = 10


def _unreadable(message: MessageRecord, unreadable: list[str]) -> bool:
    """Whether this version cannot dispatch the message (a reminder type or status a newer version wrote, read after
    a rollback; a field mangled by hand): then its id goes to `unreadable`, and it is left where it is, since one of
    them must not stop the run for every family (the run fails once its work is done, for the alarm)."""
    error = _why_unreadable(message)
    if error is None:
        return False
    if len(unreadable) < UNREADABLE_LOGGED:
        logger.error(
            "due message unreadable: left where it is", extra={"message_id": message.message_id, "error": error}
        )
    unreadable.append(message.message_id)
    return True


def _why_unreadable(message: MessageRecord) -> str | None:
    if message.known_state is None:
        return "unknown status"
    try:
        _urgency(message), parse_iso(message.deadline), parse_iso(message.scheduled_at)
    except (ValueError, TypeError) as exc:
        return type(exc).__name__
    return None


def _capacity(settings: Settings, now: datetime) -> tuple[int, bool]:
    """How many reminders to claim now, and whether only probes can go: what the provider can send before the next
    run, less what is queued; one per provider whose probe is due while no provider takes traffic; none while no
    provider can take any."""
    probes: tuple[str, ...] = ()
    while (route := provider_state.route(settings, now, skip=probes)).probe:
        probes += (str(route.provider),)
    if route.provider is None:
        if not probes:
            until = str(route.paused_until)
            logger.warning("no provider can take a request: nothing dispatched", extra={"until": until})
        return len(probes), True
    budget = int(settings.SMS_RATE_LIMIT_PER_SECOND * settings.SMS_PROCESSING_INTERVAL_MINUTES * 60)
    return max(0, budget - queue.depth(settings.SEND_QUEUE_URL, settings)), False


def dispatch_order(messages: list[MessageRecord], probing: bool) -> list[MessageRecord]:
    """The order in which due messages are claimed when not all can be: the most urgent first (`_urgency`), the one
    due longest first within each. A probe tests the provider, not the reminder: then the one that has waited longest
    goes, whatever its type, since the most urgent would, after its own failed probe, be every probe (a number the
    provider always fails would hold the circuit open over every other family's reminders)."""
    if probing:
        return sorted(messages, key=lambda m: m.due_at or "")
    return sorted(messages, key=lambda m: (_urgency(m), m.due_at or ""))


def _urgency(message: MessageRecord) -> int:
    """Lower goes first: a reply's confirmation (the family is waiting for it), then 1-day, overdue, 7-day."""
    return -1 if is_confirmation(message) else ReminderType(message.reminder_type).urgency


# More reminders for one phone in one slot than any family has; a register error beyond it still gets sent.
MAX_REMINDERS_PER_RECORD = 20


def _group_of(message: MessageRecord) -> str | None:
    """The send record a reminder shares with the others this run gives one phone, whatever their types and due
    dates; None for one that goes on its own (planned before recipients were recorded, or a reply's confirmation)."""
    if not message.recipient or is_confirmation(message):
        return None
    return str(message.recipient)


def within_capacity(ordered: list[MessageRecord], capacity: int, grouped: bool) -> list[MessageRecord]:
    """The first of `ordered` that make at most `capacity` send records: the capacity is in SMS, what the senders
    can send before the next run (and the queue depth it is cut by counts records), so a reminder that joins its
    phone's record (`by_phone`) takes none of it."""
    if not grouped:
        return ordered[:capacity]
    chosen: list[MessageRecord] = []
    sizes: dict[str, int] = {}
    records = 0
    for message in ordered:
        group = _group_of(message)
        joins = group is not None and 0 < sizes.get(group, 0) < MAX_REMINDERS_PER_RECORD
        if not joins:
            if records == capacity:
                continue
            records += 1
            if group is not None:
                sizes[group] = 0
        if group is not None:
            sizes[group] += 1
        chosen.append(message)
    return chosen


def by_phone(claimed: list[tuple[MessageRecord, QueuedMessage]]) -> list[QueuedMessage | QueuedSms]:
    """One send queue record per phone: reminders that would reach one phone in this send slot (this run) go out as
    one SMS (siblings, or one child booked once per vaccine), whatever their types and due dates. Order kept, by the
    first member."""
    groups: dict[str, list[QueuedMessage]] = {}
    records: list[QueuedMessage | QueuedSms | list[QueuedMessage]] = []
    for message, item in claimed:
        key = _group_of(message)
        if key is None:
            records.append(item)
            continue
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
    """Claim a message whose record is on the queue: pending to queued, out of the `due` index."""
    applied = store.transition(message, claim_change(iso(now)), at=now, settings=settings)
    return ClaimOutcome.CLAIMED if applied else ClaimOutcome.LOST


def claim_change(claimed_at: str) -> Change:
    """The claim of a due pending message, marked `claimed_at` (its record's mark): the dispatcher makes it after
    enqueueing the message's record, the sender when that record reaches it first (`sending`)."""
    return Change(
        target=Status.QUEUED,
        sources=frozenset({Status.PENDING}),
        set={"queued_at": claimed_at},
        guard=Guard.VERSION | Guard.DUE,
        reason="claimed",
    )
