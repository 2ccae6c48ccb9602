"""send_sms: take one queued message, re-check that it may still go out, send it once, record the outcome.

The provider call sits inside a Powertools idempotent function keyed on the SMS (a reminder alone: its id and
attempt; a grouped SMS: the key its reminders are bound to), whatever the provider, that ends
at "provider accepted"; the "sent" write is outside it. So a redelivered SQS record, a duplicate enqueue
or a crash between the provider's 201 and our write never makes a second provider request for an
accepted message: the stored result is replayed instead.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import boto3
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceLayerError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS
from pydantic import ValidationError

from core import clock, provider_state, queue, receipts, store
from core.circuit import PROBE_INTERVAL, probe_sends_unanswered
from core.dispatch import claim_change
from core.lifecycle import Status
from core.metric_names import MetricName
from core.observability import count, logger, measure
from core.pacing import Pacer, lanes_for
from core.providers.base import FailureKind, ProviderError
from core.providers.factory import provider_for
from core.queue import QueuedMessage, SendRecord
from core.retry import backoff
from core.send_decisions import Decision, Verdict, after_the_failure, before_the_send, hold_back, wait_until
from core.settings import ProviderName, Settings
from core.store import AppointmentRecord, Change, Guard, MessageRecord, PatientRecord, iso, parse_iso
from core.texts import (
    TEXT_NOT_RENDERED,
    TEXT_TOO_LONG,
    GroupedChild,
    RenderedText,
    SlotPart,
    TextTooLong,
    count_segments,
    render_confirmation,
    render_discreet,
    render_grouped,
    render_reminder,
)
from core.timing import ReminderType, due_date_starts, later_reminders_due_within, next_allowed, quiet_hours_begin
from core.wanted import OPTED_OUT, appointment_of, is_confirmation, why_not_wanted

# The key of a stored provider call whose request left and got no answer: [code, detail] of the error.
AMBIGUOUS = "ambiguous"
# The start of every idempotency record's id. Powertools' default is the running function's name, and
# plan_reminders and delivery_receipt read send_sms's records (`revival_of_bound`): under their own names they never
# found them, and a reminder whose grouped SMS went out before a crash came back free and went out twice.
SEND_KEY_PREFIX = "rappel.send_once"
IDEMPOTENCY_TTL_SECONDS = 15 * 24 * 3600  # longer than the DLQ's 14-day retention, so a redrive replays too
# The invocation's remaining time (its Lambda context's) and the time a request needs (`Settings.request_reserve_ms`),
# for the checks before each record and each request.
_time_left: contextvars.ContextVar[tuple[Callable[[], int], float] | None] = contextvars.ContextVar(
    "time_left", default=None
)


def _no_time_for_a_request() -> bool:
    """Whether this invocation has too little time left to make a provider request and hear its answer. Cut off
    mid-call, an instance would leave the request's fate unknown and its in-progress idempotency record to expire:
    the next delivery would call the provider again."""
    guard = _time_left.get()
    return guard is not None and guard[0]() < guard[1]


def _last_useful_moment() -> datetime | None:
    """The last moment this invocation can still start a request and hear its answer (None: no Lambda context)."""
    guard = _time_left.get()
    return None if guard is None else clock.now() + timedelta(milliseconds=guard[0]() - guard[1])


class SendOutcome(StrEnum):
    """What became of one reminder of a send queue record (logs, tests and the batch's own bookkeeping)."""

    SENT = "sent"
    AMBIGUOUS_SENT = "ambiguous_sent"  # recorded sent after a timeout that left the request's fate unknown
    ALREADY_RECORDED = "already_recorded"  # a replay found the send recorded already
    SENT_UNRECORDED = "sent_unrecorded"  # the provider took it, and the message moved on before that was written
    DEFERRED = "deferred"  # back to pending without an attempt (quiet hours, hold, throttled)
    RETRY = "retry"  # back to pending after a failed attempt
    DEAD_LETTER = "dead_letter"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    STALE = "stale"  # this record's claim is not the message's current one
    REDRIVEN = "redriven"  # a dead letter brought back from the DLQ: pending again, for the dispatcher
    KEPT = "kept"  # an ambiguous dead letter brought back from the DLQ: it may have gone out, an operator decides
    UNKNOWN = "unknown"  # no such message


class _NotNow(Exception):
    """Raised just before the request when it may not go now: `until` the next allowed time; a reminder whose
    deadline is before `sent_by` (when the request could reach the provider) expires instead."""

    def __init__(self, until: datetime, why: str, sent_by: datetime) -> None:
        super().__init__(why)
        self.until = until
        self.why = why
        self.sent_by = sent_by


class RequestInFlight(Exception):
    """Another sender's request for this SMS is on its way (its idempotency record is in progress and has not timed
    out): whether it went out is not known yet, so the record fails and is looked at again on its retry."""


# How long a throttled sender pauses when the provider gives no Retry-After.
THROTTLE_PAUSE_SECONDS = 1.0
# How old the batch's read of a reminder may be when it is checked before its send; older, it is read again.
MESSAGE_READ_FRESH = timedelta(seconds=1)
# How long after its check a request may wait for its turn (the pace: an interval or a few at most, a throttled pause
# much more) before the reminder is read and checked again. With MESSAGE_READ_FRESH, about how long before the
# request a cancellation may land and still be missed; a pace of one SMS a second per instance stays under it.
CHECK_AGAIN_AFTER_WAITING = timedelta(seconds=5)
# A sent write this long after the provider's answer may land after a receipt has given up waiting for it (3 s,
# `retry.LOOK_AGAIN_WAITS`) and parked itself: such a write, and a replay's, applies the parked receipts. The writes
# after an answer take well under a second, so the normal path never reads them.
RECORDED_LATE = timedelta(seconds=1)

_default_pacer = Pacer()
_pacer = _default_pacer
_processor = BatchProcessor(event_type=EventType.SQS, model=SendRecord)


def select_pacer(pacer: Pacer | None) -> None:
    """Use `pacer` for the next batches (the simulator runs several sender instances, each with its own)."""
    global _pacer
    _pacer = pacer or _default_pacer


def process_send_batch(event: dict[str, Any], context: Any, settings: Settings) -> Any:
    """Handle one SQS batch; failed records are reported back so only they are retried.

    The records go out on several lanes at once (`core.pacing`), all under this instance's one pace; Powertools'
    batch processor then reports each record's outcome, a failure for that record alone.
    """
    store.bind(settings)
    config = _idempotent_send(settings).config
    time_left = getattr(context, "get_remaining_time_in_millis", None)
    if time_left is not None:
        config.register_lambda_context(context)
    pacer = _pacer

    def send_record(parsed: SendRecord | ValidationError) -> list[SendOutcome]:
        if _no_time_for_a_request():
            # Leave it to the next invocation rather than be cut off mid-send (an ambiguous send).
            raise TimeoutError("too little time left in this invocation")
        if isinstance(parsed, ValidationError):
            raise parsed  # this record alone fails
        return send_reminders(parsed.claims, settings, pacer)

    records = event.get("Records") or []
    parsed = [_parsed(r) for r in records]
    width = pacer.lanes_needed(settings.sender_pace_per_second, settings.SMS_SENDER_CALLS_IN_FLIGHT)
    pacer.begin_batch(settings.sender_pace_per_second)
    invocation = _time_left.set((time_left, settings.request_reserve_ms) if time_left is not None else None)
    try:
        with store.read_ahead(c.message_id for p in parsed if isinstance(p, SendRecord) for c in p.claims):
            results = lanes_for(clock.current()).run([functools.partial(send_record, p) for p in parsed], width)
    finally:
        _time_left.reset(invocation)
    by_record = {str(r.get("messageId")): result for r, result in zip(records, results, strict=True)}

    def record_handler(record: SendRecord) -> str:
        # Powertools parsed the record with the same model; its outcome was reached on a lane above.
        result = by_record[record.messageId]
        if isinstance(result, Exception):
            raise result
        return ",".join(result)

    return process_partial_response(event=event, record_handler=record_handler, processor=_processor, context=context)


def _parsed(raw: dict[str, Any]) -> SendRecord | ValidationError:
    """A batch record parsed once, for its read-ahead and its lane (one that does not parse fails on its lane)."""
    try:
        return SendRecord.model_validate(raw)
    except ValidationError as error:
        return error


@dataclass(frozen=True)
class IdempotentSend:
    """The provider call made idempotent by Powertools, and what it stored for an SMS read without calling it."""

    config: IdempotencyConfig
    send_once: Callable[..., dict[str, Any]]
    persistence: DynamoDBPersistenceLayer  # configured as the decorator configures it: the records' ids agree

    def stored(self, key: str) -> dict[str, Any] | None:
        """What the call for the SMS `key` stored once it ended: the provider's acceptance, or an ambiguous outcome
        (AMBIGUOUS); None when no call ended; raises `RequestInFlight` while another sender's request for it may
        still be answered."""
        try:
            record = self.persistence.get_record({"key": key})
        except IdempotencyItemNotFoundError:
            return None
        if record is not None and record.status == STATUS_CONSTANTS["INPROGRESS"]:
            # Judged as Powertools judges it, on the wall clock: past its expiry, the sender died mid-call, and only
            # the replay of the same key can tell (a new call of that key is allowed again).
            expiry = record.in_progress_expiry_timestamp
            if expiry is None or expiry >= int(datetime.now().timestamp() * 1000):
                raise RequestInFlight(key)
        if record is None or record.status != STATUS_CONSTANTS["COMPLETED"]:
            return None
        return record.response_json_as_dict()

    def carried(self, key: str, message_id: str) -> Carried:
        """What the idempotency store says of the SMS `key` and the reminder `message_id` (see `Carried`)."""
        try:
            record = self.persistence.get_record({"key": key})
        except IdempotencyItemNotFoundError:
            return Carried.NO_CALL
        if record is None:
            return Carried.NO_CALL
        if record.status != STATUS_CONSTANTS["COMPLETED"]:
            return Carried.UNKNOWN
        outcome = record.response_json_as_dict() or {}
        return Carried.YES if message_id in (outcome.get("message_ids") or [message_id]) else Carried.NO


class Carried(StrEnum):
    """Whether an SMS went out, or may have, carrying one reminder, as its idempotency record tells."""

    YES = "yes"  # its call ended carrying it: accepted, or ambiguous
    NO = "no"  # its call ended carrying the other reminders only
    NO_CALL = "no_call"  # no call of it ended, or one the provider refused (forgotten); one may still be to come
    UNKNOWN = "unknown"  # a call is or was under way (in progress, even past its expiry: a sender that died inside
    #                      the call may have been answered)


_BOUND_TO_NONE = {"sms_key": None, "sms_bound_at": None}
# A sender binds a record's SMS before the first of its requests and makes them within its invocation: past the
# longest a Lambda function runs, no sender holding that binding is left to request an SMS not requested yet.
SENDER_OUTLIVED = timedelta(minutes=15)


class Revival(StrEnum):
    """What a cancelled reminder bound to an SMS may do when its cause is reversed (`planning.revive_message`)."""

    UNBOUND = "unbound"  # come back free: the SMS did not carry it and never will (a new one may carry it)
    BOUND = "bound"  # come back bound to that SMS: its next send goes under the same key as any late one
    CARRIED = "carried"  # stay: the SMS carried it (accepted, or may have: ambiguous)


def revival_of_bound(message: MessageRecord, settings: Settings, now: datetime) -> Revival:
    """How a cancelled reminder bound to an SMS may come back, as the SMS's idempotency record tells: free when its
    call ended without it, or no call was made and the sender that bound it can no longer be running; bound when a
    call is under way, or none was made yet and that sender may still make it (freed then, a new SMS could carry it
    as well: bound, its next send and that sender's share one key, and one request at most goes out)."""
    carried = _idempotent_send(settings).carried(str(message.sms_key), message.message_id)
    if carried is Carried.YES:
        return Revival.CARRIED
    if carried is Carried.NO:
        return Revival.UNBOUND
    bound_at = message.sms_bound_at
    outlived = carried is Carried.NO_CALL and (bound_at is None or parse_iso(bound_at) + SENDER_OUTLIVED <= now)
    return Revival.UNBOUND if outlived else Revival.BOUND


@functools.cache
def _idempotent_send(settings: Settings) -> IdempotentSend:
    client = boto3.client("dynamodb", region_name=settings.AWS_REGION, endpoint_url=settings.AWS_ENDPOINT_URL or None)
    persistence = DynamoDBPersistenceLayer(table_name=settings.IDEMPOTENCY_TABLE, boto3_client=client)
    config = IdempotencyConfig(event_key_jmespath="key", expires_after_seconds=IDEMPOTENCY_TTL_SECONDS)

    @idempotent_function(
        data_keyword_argument="request", config=config, persistence_store=persistence, key_prefix=SEND_KEY_PREFIX
    )
    def send_once(
        request: dict[str, Any], before_request: Callable[[], None], answered: list[dict[str, Any]]
    ) -> dict[str, Any]:
        # The reminders the SMS carried are kept with the result: a replay after a crash settles exactly those. With
        # the SMS's own id (a grouped SMS's key, a lone reminder's id), as the provider was given it.
        carried = {"sms_id": request["message_id"], "message_ids": request.get("message_ids"), "text": request["text"]}
        try:
            accepted = provider_for(settings, request["provider"]).send(
                to=request["to"],
                text=request["text"],
                message_id=request["message_id"],
                before_request=before_request,
                valid_until=parse_iso(request["valid_until"]) if request.get("valid_until") else None,
            )
        except ProviderError as error:
            if error.kind is not FailureKind.AMBIGUOUS:
                raise  # not sent: Powertools forgets the call, and the next try makes a new request
            # The request left and no answer came: kept as the call's result (Powertools forgets a call that raised),
            # so a crash before the policy's write replays this, never a second request.
            answered.append({"provider": request["provider"], AMBIGUOUS: [error.code, error.detail], **carried})
            return answered[-1]
        answered.append({"provider": accepted.provider, "provider_message_id": accepted.provider_message_id, **carried})
        return answered[-1]

    # What the decorator does on each call, done once here so that `accepted` can read before any call.
    persistence.configure(config, f"{send_once.__module__}.{send_once.__qualname__}", key_prefix=SEND_KEY_PREFIX)
    return IdempotentSend(config, send_once, persistence)


def reset() -> None:
    """Forget cached idempotency wiring and pacing (tests and the embedded stack change endpoints and clocks)."""
    global _default_pacer, _pacer
    _idempotent_send.cache_clear()
    _default_pacer = _pacer = Pacer()


def send_queued(item: QueuedMessage, settings: Settings, pacer: Pacer) -> SendOutcome:
    """Send one queued message if it may still go out; returns what happened (for logs and tests)."""
    return send_reminders((item,), settings, pacer)[0]


@dataclass(frozen=True)
class _Ready:
    """A reminder that passed every check before the send, with what its text is made of."""

    message: MessageRecord
    patient: PatientRecord
    appointment: AppointmentRecord
    deadline: datetime  # the last instant it may go out (`deadline_now`), as its checks found it
    checked_at: datetime  # when its checks ran (on reads at most MESSAGE_READ_FRESH older)
    alone: bool = False  # to go under its own attempt's key, never grouped (see `_prepare`)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.patient.timezone)


def deadline_now(message: MessageRecord, patient: PatientRecord, appointment: AppointmentRecord) -> datetime:
    """The message's deadline; for a pre-due reminder, no later than the start of its due date in the family's zone
    as it is now. A family gone east since the reminder was planned, when its new schedule's deadline had passed
    already (planning leaves the old one, which may still be a time to send it), must not get its "1 day before" on
    the due date."""
    stored = parse_iso(message.deadline)
    due_starts = due_date_starts(
        message.reminder_type, date.fromisoformat(appointment.due_date), ZoneInfo(patient.timezone)
    )
    return min(stored, due_starts) if due_starts is not None else stored


def send_reminders(items: Sequence[QueuedMessage], settings: Settings, pacer: Pacer) -> list[SendOutcome]:
    """Send the reminders of one send queue record (one, or several for one phone) as few SMS as they fit in;
    returns what happened to each (for logs and tests), in no particular order."""
    now = clock.now()
    outcomes: list[SendOutcome] = []
    ready: list[_Ready] = []
    for item in items:
        prepared = _prepare(item, settings, now)
        if isinstance(prepared, SendOutcome):
            outcomes.append(prepared)
        else:
            ready.append(prepared)
    for key, members in _sms_of(ready, settings, outcomes, grouped=len(items) > 1):
        try:
            rendered = _render_sms(members, settings)
        except Exception as exc:
            outcomes += _unrenderable_sms(key, members, exc, now, settings)
            continue
        outcomes += _send_sms(key, members, rendered, settings, pacer)
    return outcomes


def _prepare(item: QueuedMessage, settings: Settings, now: datetime) -> _Ready | SendOutcome:
    """The reminder, if this claim of it may still go out now; else what became of it."""
    message = _this_claim(item, settings, now)
    if isinstance(message, SendOutcome):
        return message
    if message.sms_key is not None:
        # Bound by an earlier delivery of this record: if its SMS went out before a crash, recorded sent now,
        # before anything that could turn it down (a text that no longer renders, every provider down, then a
        # cancellation with no record left to tell).
        went_out = _went_out(message, settings)
        if went_out is not None:
            return _record_replayed(message, went_out, settings)
    patient = store.get_patient(message.patient_id)
    appointment = appointment_of(message)  # a confirmation has none: a stand-in
    not_wanted = why_not_wanted(patient, appointment, message)
    deadline = deadline_now(message, patient, appointment) if patient and appointment else parse_iso(message.deadline)
    decision = before_the_send(not_wanted=not_wanted, deadline=deadline, now=now)
    if decision.verdict is not Verdict.SEND or patient is None or appointment is None:
        return _apply(decision, message, now, settings)
    if message.sms_key is None:
        # One bound to a grouped SMS is not held back here: that SMS may have gone out before a crash, and only its
        # replay can tell (the check right before the request still holds it back if no request was made).
        decision = _hold_back(message, patient, appointment, settings, now)
        if decision.verdict is not Verdict.SEND:
            return _apply(decision, message, now, settings)
        stored = _stored_send(message, settings) if message.revived else None
        if stored is not None and AMBIGUOUS not in stored:
            # Its SMS went out before a crash (or is going out from another sender now), then it was cancelled and
            # revived: grouped now with a sibling, it would go out under a new key, a second time.
            return _record_replayed(message, stored, settings)
        # Its request went unanswered while it was cancelled and revived (the policy's write could not land then): it
        # goes alone under that request's key, whose replay applies the policy, never in a new SMS.
        return _Ready(message, patient, appointment, deadline, now, alone=stored is not None)
    return _Ready(message, patient, appointment, deadline, now)


def _this_claim(item: QueuedMessage, settings: Settings, now: datetime) -> MessageRecord | SendOutcome:
    """The queued message this record's claim is for, or why the record is dropped.

    The dispatcher enqueues before it claims: a record that arrives before its claim (or after a dispatcher crash
    between the two) finds the message pending one version below it, and makes the claim itself."""
    # Timed from the check itself, not from the record's start: a grouped record checks its reminders in turn.
    message = store.get_message(item.message_id, read_since=clock.now() - MESSAGE_READ_FRESH)
    if message is None:
        logger.warning("queued message unknown", extra={"message_id": item.message_id})
        return SendOutcome.UNKNOWN
    if message.known_state is None:  # moved on by a newer version (during a deploy, or before a rollback)
        logger.warning("queued message in a status this version does not know", extra={"message_id": item.message_id})
        return SendOutcome.STALE
    if message.state is Status.PENDING and int(message.version) == item.version - 1:
        store.transition(message, claim_change(item.claimed_at or iso(now)), at=now, settings=settings)
        message = store.get_message(item.message_id)  # claimed by us, or by the dispatcher meanwhile, or moved on
        if message is None:
            return SendOutcome.UNKNOWN
    if int(message.version) != item.version:
        if message.state is Status.CANCELLED and (accepted := _went_out(message, settings)) is not None:
            # Cancelled after its SMS went out and before that was written (a crash between the two): it was sent.
            return _record_replayed(message, accepted, settings)
        # Superseded by a newer claim (which has its own queue message), settled already, or an old record of a
        # dead letter delivered again: only the DLQ copy, written with the dead letter's version, may take it back.
        return SendOutcome.STALE
    if message.state is Status.DEAD_LETTER:
        return _take_back_dead_letter(message, now, settings)
    if message.state is not Status.QUEUED:
        return SendOutcome.STALE  # settled already, or superseded by a newer claim that has its own queue message
    if item.claimed_at is not None and message.queued_at != item.claimed_at:
        # Another record for the same version: a run enqueued it and then lost the claim (it died before claiming,
        # or read a stale index), so the claim is another record's. Sending from both could send twice.
        return SendOutcome.STALE
    return message


def _hold_back(
    message: MessageRecord, patient: PatientRecord, appointment: AppointmentRecord, settings: Settings, now: datetime
) -> Decision:
    """Superseded by the next reminder of its dose, or held back (no provider, quiet hours)? Read, then decided."""
    next_one = _next_reminder_within_gap(message, patient, appointment, now, settings)
    paused = provider_state.paused_until(settings, now)
    return hold_back(
        superseded_by=next_one.reminder_type if next_one is not None else None,
        gap_hours=settings.SMS_MIN_GAP_HOURS,
        paused_until=paused,
        paused_why=_circuits_text(settings, now) if paused is not None else "",
        zone=ZoneInfo(patient.timezone),
        quiet_hours=settings.quiet_hours,
        deadline=parse_iso(message.deadline),
        now=now,
    )


def _apply(decision: Decision, message: MessageRecord, now: datetime, settings: Settings) -> SendOutcome:
    """Write a decision taken before the request; unless this claim's SMS went out before a crash, which the checks
    cannot undo: then it is recorded sent."""
    if (accepted := _went_out(message, settings)) is not None:
        return _record_replayed(message, accepted, settings)
    if decision.verdict is Verdict.DEFER and decision.until is not None:
        return _defer(message, decision.until, decision.reason, now, settings)
    target = Status.CANCELLED if decision.verdict is Verdict.CANCEL else Status.EXPIRED
    return _settle(message, target, decision.reason, now, settings)


def _key_of_next_sms(message: MessageRecord) -> str:
    """The idempotency key of the SMS that carries this message's next attempt: the grouped SMS it is bound to, else
    its own (message, attempt)."""
    return message.sms_key or f"{message.message_id}#{int(message.attempts) + 1}"


def _stored_send(message: MessageRecord, settings: Settings) -> dict[str, Any] | None:
    """What the idempotency store holds for the SMS this message's claim made, if that SMS carried this message:
    the provider's acceptance, or an ambiguous outcome (one read, on the paths that would not send and before a
    revived reminder's send). Raises `RequestInFlight` while that request may still be answered: deciding now could
    send it twice, or call it unsent."""
    try:
        stored = _idempotent_send(settings).stored(_key_of_next_sms(message))
    except RequestInFlight:
        logger.warning(
            "its SMS's request is still on its way from another sender: the record waits for its retry",
            extra={"message_id": message.message_id},
        )
        raise
    if stored is None or message.message_id not in (stored.get("message_ids") or [message.message_id]):
        return None
    return stored


def _went_out(message: MessageRecord, settings: Settings) -> dict[str, Any] | None:
    """The provider's stored acceptance of the SMS this message's claim made, if it went out before a crash (an
    ambiguous outcome is not one: its replay applies the policy)."""
    stored = _stored_send(message, settings)
    return None if stored is None or AMBIGUOUS in stored else stored


def _record_replayed(message: MessageRecord, accepted: dict[str, Any], settings: Settings) -> SendOutcome:
    """Record as sent what the provider accepted for this message before a crash, from its stored acceptance (one
    stored before results kept their text has none: the text is then left unrecorded)."""
    logger.warning("an SMS accepted before a crash is recorded now", extra={"message_id": message.message_id})
    text = accepted.get("text")
    segments = count_segments(text) if text else None
    carried = len(accepted.get("message_ids") or [message.message_id])
    outcome = _record_sent(message, int(message.attempts) + 1, accepted, text, segments, settings, carried=carried)
    _apply_parked_receipts(accepted, [message.message_id], settings)
    return outcome


def _apply_parked_receipts(accepted: dict[str, Any], message_ids: list[str], settings: Settings) -> None:
    """The receipts that came before this SMS was recorded sent, and were parked for it, applied now."""
    provider, sms_id = accepted.get("provider"), accepted.get("provider_message_id")
    if provider and sms_id:
        receipts.apply_parked(str(provider), str(sms_id), message_ids, settings)


def _next_reminder_within_gap(
    message: MessageRecord, patient: PatientRecord, appointment: AppointmentRecord, now: datetime, settings: Settings
) -> MessageRecord | None:
    """The later reminder of this dose that will go out within SMS_MIN_GAP_HOURS of now, if any: a late reminder
    that close to the next is dropped, so a family never gets two for one dose in a few hours (no pile-up)."""
    if not settings.SMS_MIN_GAP_HOURS or is_confirmation(message):
        return None
    # Cheap first: by the timing rules, is any later reminder of this dose due that soon? Only then read them.
    soon = later_reminders_due_within(
        ReminderType(message.reminder_type),
        date.fromisoformat(appointment.due_date),
        ZoneInfo(patient.timezone),
        int(patient.preferred_hour) if patient.preferred_hour is not None else None,
        settings,
        now=now,
    )
    if not soon:
        return None
    for other in store.reminders_of(message.appointment_id, [message.due_date], [message.patient_id]):
        if other.reminder_type in soon and other.known_state in {Status.PENDING, Status.QUEUED}:
            return other
    return None


def _unrenderable_sms(
    key: str, members: list[_Ready], exc: Exception, now: datetime, settings: Settings
) -> list[SendOutcome]:
    """What becomes of reminders whose SMS text cannot be made. Bound by an earlier delivery that made no request
    (every provider was down) and too long now (a name corrected since): freed, to be composed again, split as they
    need, at their next claim; otherwise each fails."""
    bound = len(members) > 1 and members[0].message.sms_key == key and isinstance(exc, TextTooLong)
    if bound and _idempotent_send(settings).carried(key, members[0].message.message_id) is Carried.NO_CALL:
        why = f"composed again: the grouped text no longer fits ({exc})"
        return [_defer(m.message, now, why, now, settings) for m in members]
    return [_unrenderable(m, exc, now, settings) for m in members]


def _unrenderable(one: _Ready, exc: Exception, now: datetime, settings: Settings) -> SendOutcome:
    if isinstance(exc, TextTooLong):
        return _settle(one.message, Status.FAILED, f"{TEXT_TOO_LONG}: {exc}", now, settings)
    # Whatever the stored data holds, one message never crashes its batch.
    why = f"{TEXT_NOT_RENDERED}: {type(exc).__name__}: {exc}"
    return _settle(one.message, Status.FAILED, why, now, settings)


def _sms_of(
    ready: list[_Ready], settings: Settings, outcomes: list[SendOutcome], *, grouped: bool
) -> list[tuple[str, list[_Ready]]]:
    """The SMS that carry these reminders (those of one record, `grouped` when it has several), each with its key
    and its reminders.

    Reminders already bound to an SMS (an earlier delivery of this record crashed) keep it, so its replay settles
    them; the others are composed (one SMS per clinic, split by child when too long, never truncated) and bound
    before any request, with one conditional write each.
    """
    alone = [(_key_of_next_sms(one.message), [one]) for one in ready if one.alone]
    ready = [one for one in ready if not one.alone]
    if not ready or (not grouped and ready[0].message.sms_key is None):
        # A record's one reminder needs no binding: its key is its attempt, as the ungrouped path always had. Not one
        # left alone from a grouped record: another delivery of that record, which checked its siblings before one
        # of them was cancelled, may be sending it in their SMS; the binding lets only one of them have it.
        return alone + ([(_key_of_next_sms(ready[0].message), ready)] if ready else [])
    bound: dict[str, list[_Ready]] = {}
    for one in ready:
        if one.message.sms_key:
            bound.setdefault(one.message.sms_key, []).append(one)
    fresh = [one for one in ready if not one.message.sms_key]
    sms = list(bound.items())
    for key, members in sms:
        # A crash after binding some of an SMS's reminders: the rest join it if they fit (if it went out without
        # them, its replay says so and they go in the next one).
        joining = [f for f in fresh if _sms_group(f)[:2] == _sms_group(members[0])[:2]]
        if joining and _fits(members + joining, settings):
            fresh = [f for f in fresh if f not in joining]
            members += _bind(key, joining, outcomes)
    for members in _compose(fresh, settings):
        reminders = "|".join(f"{m.message.message_id}#{int(m.message.attempts)}" for m in members)
        key = "sms_" + hashlib.sha256(reminders.encode()).hexdigest()[:32]
        kept = _bind(key, members, outcomes)
        if kept:
            sms.append((key, kept))
    return alone + sms


def _bind(key: str, members: list[_Ready], outcomes: list[SendOutcome]) -> list[_Ready]:
    """Those of `members` now bound to the SMS `key`; the others are another claim's or another SMS's."""
    kept = []
    for member in members:
        if store.bind_to_sms(member.message, key, clock.now()):
            member.message.sms_key = key
            kept.append(member)
        else:
            outcomes.append(SendOutcome.STALE)
    return kept


def _sms_group(one: _Ready) -> tuple[str, str, str, str]:
    """What decides which SMS a reminder may share: its patient's phone now (a record groups reminders by the
    phone they had when dispatched, and a family may have given the clinic a new number since), its clinic, then
    its child."""
    return (one.patient.phone, one.appointment.clinic or "", one.patient.patient_id, one.message.message_id)


def _compose(ready: list[_Ready], settings: Settings) -> list[list[_Ready]]:
    """Reminders grouped into as few SMS as fit: one per phone and clinic, then, if that is too long for
    SMS_MAX_SEGMENTS, one per reminder type and due date, then one per child, then one per reminder."""
    out: list[list[_Ready]] = []
    for _, same_phone in itertools.groupby(sorted(ready, key=_sms_group), key=lambda r: _sms_group(r)[:2]):
        out += _fitting_sms(list(same_phone), (_slot_part, lambda r: r.patient.patient_id), settings)
    return out


def _slot_part(one: _Ready) -> tuple[str, str]:
    """The sentence of an SMS a reminder is named in: its due date and type."""
    return (one.appointment.due_date, one.message.reminder_type)


def _fitting_sms(
    members: list[_Ready], splits: tuple[Callable[[_Ready], Any], ...], settings: Settings
) -> list[list[_Ready]]:
    if _fits(members, settings):
        return [members]
    if not splits:
        return [[one] for one in members]
    split, rest = splits[0], splits[1:]
    # A stable sort: each part keeps the members in their order (child, then reminder).
    return [
        sms
        for _, part in itertools.groupby(sorted(members, key=split), key=split)
        for sms in _fitting_sms(list(part), rest, settings)
    ]


def _fits(members: list[_Ready], settings: Settings) -> bool:
    if len(members) == 1:
        return True  # a reminder alone is rendered (or fails) on its own
    try:
        _render_sms(members, settings)
    except TextTooLong:
        return False
    return True


def _render_sms(members: list[_Ready], settings: Settings) -> RenderedText:
    """The text of one SMS: a reminder's own text, or the grouped text naming every child and dose (a sentence per
    reminder type and due date), in the language of the first child (by patient id), since one SMS has one
    language."""
    if len(members) == 1:
        one = members[0]
        return render_message(one.message, one.patient, one.appointment, settings)
    first = min(members, key=lambda m: m.patient.patient_id)
    language, clinic = first.patient.language, first.appointment.clinic
    if settings.SMS_DISCREET_TEXTS or any(m.patient.discreet for m in members):
        # One discreet child makes the whole SMS discreet: the phone is one. One segment a sentence at most.
        parts = [
            SlotPart(reminder_type, date.fromisoformat(due)) for due, reminder_type in {_slot_part(m) for m in members}
        ]
        return render_discreet(
            language=language, parts=parts, clinic=clinic, max_segments=min(len(parts), settings.SMS_MAX_SEGMENTS)
        )
    sentences: dict[tuple[str, str], dict[str, list[_Ready]]] = {}
    for member in sorted(members, key=lambda m: m.patient.patient_id):
        sentences.setdefault(_slot_part(member), {}).setdefault(member.patient.patient_id, []).append(member)
    parts = [
        SlotPart(
            reminder_type,
            date.fromisoformat(due),
            tuple(
                GroupedChild(
                    rows[0].patient.display_name, tuple((r.appointment.vaccine, int(r.appointment.dose)) for r in rows)
                )
                for rows in children.values()
            ),
        )
        for (due, reminder_type), children in sentences.items()
    ]
    return render_grouped(language=language, parts=parts, clinic=clinic, max_segments=settings.SMS_MAX_SEGMENTS)


def _send_sms(
    key: str, members: list[_Ready], rendered: RenderedText, settings: Settings, pacer: Pacer
) -> list[SendOutcome]:
    """One SMS: its request to the first provider that may take it (the next one at once when that one turns out
    to be down), or the replay of its stored result; and each reminder's outcome."""
    lead = members[0]
    request = {
        "key": key,
        "message_id": key if len(members) > 1 or lead.message.sms_key else lead.message.message_id,
        "to": lead.patient.phone,
        "text": rendered.text,
        "message_ids": [m.message.message_id for m in members],
        "valid_until": iso(_wanted_until(members, settings)),
    }
    tried: list[str] = []
    asked = False
    why = ""
    while True:
        now = clock.now()
        route = provider_state.take_route(settings, now, skip=tuple(tried))
        if route.provider is None:  # every provider down, or another sender took the only probe
            why = why or f"no provider can take it: {_circuits_text(settings, now)}"
            until = provider_state.paused_until(settings, now) or route.paused_until or now + PROBE_INTERVAL
            # Not asked, so not known: an SMS bound before this delivery may have gone out before a crash.
            return [_defer(m.message, until, why, now, settings, keep_binding=not asked) for m in members]
        # On a fallback (the first provider down, or found down by this request), a failure is the outage's too.
        failed_over = bool(tried) or route.provider != settings.providers[0].value
        if route.probe and _silent(route.provider, settings):
            tried.append(route.provider)
            why = f"{route.provider} circuit open: no answer to its probe's read"
            continue
        request_to = {**request, "provider": route.provider}
        outcome = _request(route.provider, request_to, members, rendered, settings, pacer, failed_over=failed_over)
        if not isinstance(outcome, str):
            return outcome
        asked = True
        tried.append(route.provider)
        why = outcome


def _silent(provider: str, settings: Settings) -> bool:
    """Whether a provider whose circuit is open still gives no answer at all to a request that sends nothing (one
    more failure of its circuit). Its probe then risks no reminder: an SMS that gets no answer is recorded sent under
    the default policy, and lost, one family a minute for as long as a provider hangs. Every thirtieth such failure
    the probe's SMS goes all the same (`circuit.probe_sends_unanswered`)."""
    if _no_time_for_a_request():
        return False  # the request's own check defers the SMS
    try:
        answered = provider_for(settings, provider).answers()
    except ProviderError:
        return False  # not built (its secret, its endpoint): the request meets the same error and acts on it
    if answered:
        return False
    circuit = provider_state.record_transient_failure(provider, clock.now(), settings, "no answer to its probe's read")
    silent = not probe_sends_unanswered(circuit)
    logger.warning(
        "provider gave no answer to its probe's read", extra={"provider": provider, "sms_risked": not silent}
    )
    return silent


def _wanted_until(members: list[_Ready], settings: Settings) -> datetime:
    """Until when the SMS may still reach the phone: the earliest deadline it carries, and no later than the start
    of the family's quiet hours (a gateway holding it, its link down, must not deliver it late or at night)."""
    deadline = min(m.deadline for m in members)
    quiet_begins = quiet_hours_begin(clock.now(), members[0].zone, settings.quiet_hours)
    return deadline if quiet_begins is None else min(deadline, quiet_begins)


def _request(
    provider: str,
    request: dict[str, Any],
    members: list[_Ready],
    rendered: RenderedText,
    settings: Settings,
    pacer: Pacer,
    *,
    failed_over: bool = False,
) -> list[SendOutcome] | str:
    """One request to `provider` (or the replay of a stored result) and each reminder's outcome; or, when the
    provider turned out to be down (its circuit open, or held), why, for the next provider to take the SMS.
    `failed_over`: the SMS is on a fallback provider, the one before it down."""
    send_once = _idempotent_send(settings).send_once
    requested: list[datetime] = []
    try:
        try:
            accepted = _outcome_of(send_once, request, _at_the_request(members, settings, pacer, requested))
        finally:
            if requested:  # how long the provider took sizes the lanes (a replay made no request)
                pacer.observe((clock.now() - requested[-1]).total_seconds())
    except _NotNow as not_now:
        now = clock.now()
        return [
            _settle(m.message, Status.EXPIRED, "deadline passed before it could be sent", now, settings)
            if m.deadline <= not_now.sent_by
            else _defer(m.message, not_now.until, not_now.why, now, settings)
            for m in members
        ]
    except ProviderError as error:
        return _after_provider_error(error, provider, members, rendered, settings, pacer, failed_over=failed_over)
    if AMBIGUOUS in accepted:  # this call's, or a replay of one whose outcome a crash kept from being written
        return _after_ambiguous(accepted, bool(requested), members, rendered, settings)
    answered_at = clock.now()
    if requested:  # a replay asked no provider anything: it says nothing of this one's circuit
        provider_state.record_answer(provider, answered_at)
    outcomes = _record_accepted(accepted, request, members, rendered, settings)
    if not requested or clock.now() - answered_at > RECORDED_LATE:
        _apply_parked_receipts(accepted, list(accepted.get("message_ids") or request["message_ids"]), settings)
    return outcomes


def _at_the_request(
    members: list[_Ready], settings: Settings, pacer: Pacer, requested: list[datetime]
) -> Callable[[], None]:
    """What runs right before the HTTP request (after the adapter has its token: the pace is that of requests,
    whatever a token fetch took), noting its time in `requested`. Pacing took time, and so will the call: a request
    that could reach the provider inside quiet hours or after a deadline, or that this invocation has no time left
    for, raises `_NotNow` instead."""
    deadline = min(m.deadline for m in members)
    checked_at = min(m.checked_at for m in members)

    def at_the_request() -> None:
        slot = pacer.wait(settings.sender_pace_per_second, latest=_last_useful_moment())
        if slot is not None:  # a provider's pause (Retry-After) outlasts this invocation: wait for it as pending
            raise _NotNow(slot, "throttled: the provider's pause outlasts this invocation", slot)
        if _no_time_for_a_request():  # the pace took what the call needed
            raise _NotNow(clock.now(), "too little time left in this invocation", clock.now())
        if clock.now() - checked_at > CHECK_AGAIN_AFTER_WAITING and (changed := _changed_since_checked(members)):
            # The pace outlasted the check (a throttled pause, lanes): a dose given or a STOP meanwhile must stop it.
            raise _NotNow(clock.now(), f"changed while it waited for its turn: {changed}", clock.now())
        requested.append(clock.now())
        sent_by = clock.now() + timedelta(seconds=settings.PROVIDER_CONNECT_TIMEOUT_SECONDS)
        if deadline <= sent_by:
            raise _NotNow(sent_by, "deadline passed before it could be sent", sent_by)
        allowed = next_allowed(sent_by, members[0].zone, settings.quiet_hours)
        if allowed != sent_by:
            raise _NotNow(allowed, "quiet hours", sent_by)

    return at_the_request


def _changed_since_checked(members: list[_Ready]) -> str | None:
    """What changed, read again now, that the checks of these reminders would have stopped them for: the reminder
    moved (cancelled, taken by another claim), its phone changed, or it is no longer wanted (`why_not_wanted`)."""
    for member in members:
        message = store.get_message(member.message.message_id)
        if message is None or message.version != member.message.version:
            return "the reminder moved on"
        patient = store.get_patient(message.patient_id, fresh=True)
        if patient is None or patient.phone != member.patient.phone:
            return "its phone changed"
        fresh = appointment_of(message) if is_confirmation(message) else None
        appointment = fresh or store.get_appointment(message.appointment_id, fresh=True)
        if why := why_not_wanted(patient, appointment, message, fresh=True):
            return why
    return None


def _outcome_of(
    send_once: Callable[..., dict[str, Any]], request: dict[str, Any], before_request: Callable[[], None]
) -> dict[str, Any]:
    """The idempotent call's outcome. When the provider answered and Powertools could not store the answer (a
    DynamoDB error), the answer in hand: failing the record instead would bring it back after the in-progress
    record's expiry, and the SMS would be requested again. Only a crash before the sent write is then left to that
    expiry (the residual window of a death inside the call)."""
    answered: list[dict[str, Any]] = []
    try:
        return send_once(request=request, before_request=before_request, answered=answered)
    except IdempotencyPersistenceLayerError:
        if not answered:
            raise
        logger.warning("the provider's answer could not be stored for a replay; recorded from the answer in hand")
        return answered[-1]


def _record_accepted(
    accepted: dict[str, Any],
    request: dict[str, Any],
    members: list[_Ready],
    rendered: RenderedText,
    settings: Settings,
) -> list[SendOutcome]:
    carried = set(accepted.get("message_ids") or request["message_ids"])
    # A replay records the SMS as it went out, which may name a sibling settled since.
    sent_text = accepted.get("text") or rendered.text
    segments = rendered.segments if sent_text == rendered.text else count_segments(sent_text)
    outcomes = []
    for m in members:
        if m.message.message_id in carried:
            attempt = int(m.message.attempts) + 1
            outcomes.append(
                _record_sent(m.message, attempt, accepted, sent_text, segments, settings, carried=len(carried))
            )
        else:
            outcomes.append(_left_out(m.message, settings))
    return outcomes


def _left_out(message: MessageRecord, settings: Settings) -> SendOutcome:
    """A reminder not in the SMS the provider took (or may have taken) before a crash: it goes in the next one."""
    now = clock.now()
    return _defer(message, now, "left out of its SMS", now, settings)


def _failed(
    member: _Ready,
    error: ProviderError,
    provider: str,
    settings: Settings,
    rendered: RenderedText,
    carried: int = 1,
) -> SendOutcome:
    """The outcome of one reminder of an SMS `provider` did not take (or may not have), by its next attempt;
    `carried`: how many reminders that SMS carried (recorded if it is taken as sent)."""
    message = member.message
    return _after_failure(
        message,
        error,
        int(message.attempts) + 1,
        provider,
        settings,
        rendered,
        member.zone,
        member.patient.phone,
        carried,
    )


def _after_provider_error(
    error: ProviderError,
    provider: str,
    members: list[_Ready],
    rendered: RenderedText,
    settings: Settings,
    pacer: Pacer,
    *,
    failed_over: bool = False,
) -> list[SendOutcome] | str:
    """What a refused or failed request means for the provider's circuit, then for each reminder of the SMS; or
    why the provider is down, when it is (the SMS then goes to the next provider)."""
    now = clock.now()
    if error.kind is FailureKind.THROTTLED:
        retry_after = timedelta(seconds=error.retry_after_seconds or 0.0)
        if retry_after > PROBE_INTERVAL:
            count(MetricName.PROVIDER_THROTTLED)
            # A quota spent (an hour's, a day's): for the families an outage of this provider, whatever it is
            # called. Held until its Retry-After, so the next provider takes the traffic (and the dispatcher stops
            # claiming for it when there is none); this instance keeps its pace for the others.
            provider_state.hold(provider, now, settings, f"{provider}: {error.code} throttled", until=now + retry_after)
            return f"{provider} throttled until {iso(now + retry_after)}: {error}"
        provider_state.record_answer(provider, now)  # throttling is an answer: the provider is up
        return [_throttled(m.message, error, pacer, m.zone, settings) for m in members]
    if error.kind is FailureKind.REFUSED:
        error = _confirm_refusal(error, provider, now, settings)
    if error.kind is FailureKind.PROVIDER_WIDE:
        provider_state.hold(provider, now, settings, f"{provider}: {error.code}")
        return f"{provider} on hold: {error}"
    # An ambiguous outcome never comes here: `send_once` keeps it as its result, for `_after_ambiguous`.
    if error.kind is FailureKind.TRANSIENT:
        circuit = provider_state.record_transient_failure(provider, now, settings, f"{error.code}: {error.detail}")
        if circuit.is_open:
            # The provider's failure, not the message's: no attempt is burnt; the next provider takes it, or it goes
            # out after the outage, before its deadline or not at all.
            return f"{provider} circuit open: {error}"
        if failed_over:
            # A fallback failing while the provider before it is down: an outage of both, not the message's fault. A
            # lone reminder spent its attempts on each provider before their circuits opened, and was dead-lettered.
            return [_retry_unspent(m, error, provider, now, settings) for m in members]
    else:
        provider_state.record_answer(provider, now)
    return [_failed(m, error, provider, settings, rendered) for m in members]


def _retry_unspent(
    member: _Ready, error: ProviderError, provider: str, now: datetime, settings: Settings
) -> SendOutcome:
    """Back to pending for a retry after the backoff of its last attempt, no attempt spent (bounded by its deadline)."""
    attempts = max(1, int(member.message.attempts))
    delay = backoff(attempts, settings.SMS_RETRY_DELAY_MINUTES, error.retry_after_seconds)
    until = next_allowed(now + delay, member.zone, settings.quiet_hours)
    return _defer(member.message, until, f"{provider}, failed over to, is failing too: {error}", now, settings)


def _after_ambiguous(
    stored: dict[str, Any], requested: bool, members: list[_Ready], rendered: RenderedText, settings: Settings
) -> list[SendOutcome]:
    """The policy for an SMS whose request left and got no answer, from its stored outcome: the provider it went to
    (a replay may be routed to another one now), and the reminders it carried (the others go in the next SMS). Only
    the request itself counts towards that provider's circuit and `AmbiguousSends`, not a replay of it."""
    code, detail = stored[AMBIGUOUS]
    error = ProviderError(FailureKind.AMBIGUOUS, code, detail)
    provider = str(stored["provider"])
    carried = set(stored.get("message_ids") or [m.message.message_id for m in members])
    if requested:
        provider_state.record_transient_failure(provider, clock.now(), settings, f"{code}: {detail}")
        for m in members:
            if m.message.message_id in carried:
                count(MetricName.AMBIGUOUS_SENDS, reminder_type=m.message.reminder_type, provider=provider)
    return [
        _failed(m, error, provider, settings, rendered, len(carried))
        if m.message.message_id in carried
        else _left_out(m.message, settings)
        for m in members
    ]


def _circuits_text(settings: Settings, now: datetime) -> str:
    return "; ".join(
        f"{c.provider} {c.kind or 'open'} until {iso(c.retry_at)} ({c.reason})"
        for c in provider_state.open_circuits(settings, now)
        if c.retry_at is not None
    )


def render_message(
    message: MessageRecord, patient: PatientRecord, appointment: AppointmentRecord, settings: Settings
) -> RenderedText:
    """The text of a reminder as it goes out now: the patient's current language and name, the appointment's data
    (or, for a discreet patient or program, the date and clinic only, in one segment). A confirmation of a reply's
    change names nobody: its fixed text, in the patient's language."""
    if is_confirmation(message):
        return render_confirmation(language=patient.language, opted_out=message.appointment_id == OPTED_OUT)
    if patient.discreet or settings.SMS_DISCREET_TEXTS:
        return _discreet(message, patient, appointment)
    return render_reminder(
        reminder_type=message.reminder_type,
        language=patient.language,
        name=patient.display_name,
        vaccine=appointment.vaccine,
        dose=int(appointment.dose),
        due_date=date.fromisoformat(appointment.due_date),
        clinic=appointment.clinic,
        max_segments=settings.SMS_MAX_SEGMENTS,
    )


def _discreet(message: MessageRecord, patient: PatientRecord, appointment: AppointmentRecord) -> RenderedText:
    # One segment: a discreet text is short by design.
    return render_discreet(
        language=patient.language,
        parts=[SlotPart(message.reminder_type, date.fromisoformat(appointment.due_date))],
        clinic=appointment.clinic,
        max_segments=1,
    )


def _take_back_dead_letter(message: MessageRecord, now: datetime, settings: Settings) -> SendOutcome:
    # A redriven dead letter past its deadline expires. Else it goes back to pending, due now, with a fresh set of
    # retries counted from here, and the dispatcher sends it on its next run. Not sent from here: a crash after this
    # write would leave a redelivered record stale and the message queued with no record; pending, it is in the
    # `due` index whatever happens next.
    if parse_iso(message.deadline) <= now:
        return _settle(message, Status.EXPIRED, "deadline passed before it could be sent", now, settings)
    if message.text is not None:
        # An ambiguous send (its text is recorded): the SMS may have gone out, and a redrive, which brings back every
        # dead letter at once, must not send it a second time. It stays for an operator (`resend_dead_letter`).
        logger.warning("ambiguous dead letter redriven: left for an operator", extra={"message_id": message.message_id})
        return SendOutcome.KEPT
    change = _back_to_pending(message, now, settings, "redriven from the dead letter queue")
    return SendOutcome.REDRIVEN if store.transition(message, change, at=now, settings=settings) else SendOutcome.STALE


def _back_to_pending(message: MessageRecord, now: datetime, settings: Settings, reason: str) -> Change:
    """A dead letter back to pending, due now, with a fresh set of retries counted from here."""
    return Change(
        target=Status.PENDING,
        sources=frozenset({Status.DEAD_LETTER}),
        set={
            "retry_floor": int(message.attempts),
            "due_at": iso(now),
            "due_shard": store.shard_of(message.message_id, settings.DUE_INDEX_SHARDS),
            "text": None,  # what an ambiguous attempt carried: no longer this message's last word
            "segments": None,
            "provider_message_id": None,  # nor is its stand-in id, which a receipt would match
            "sms_reminders": None,
            **_BOUND_TO_NONE,  # bound to no SMS: the next claim composes a new one
        },
        guard=Guard.VERSION,
        reason=reason,
    )


def resend_dead_letter(message_id: str, settings: Settings) -> bool:
    """An operator's decision to send a dead letter again now, ambiguous ones included (whose SMS may have gone out:
    the family may then get it twice). False when it is not a dead letter (any more), or its deadline has passed."""
    store.bind(settings)
    now = clock.now()
    message = store.get_message(message_id)
    if message is None or message.state is not Status.DEAD_LETTER or parse_iso(message.deadline) <= now:
        return False
    why = "sent again by an operator" + (": its earlier attempt may have gone out" if message.text else "")
    return store.transition(message, _back_to_pending(message, now, settings, why), at=now, settings=settings)


def assume_sent(message_id: str, settings: Settings) -> bool:
    """An operator's decision that an ambiguous dead letter's SMS went out: recorded `sent` from when it was tried,
    as `SMS_ON_AMBIGUOUS_SEND=assume_sent` would have (its receipt may still settle it; none, and its family is
    called). False when it is not an ambiguous dead letter (any more)."""
    store.bind(settings)
    now = clock.now()
    message = store.get_message(message_id)
    if message is None or message.state is not Status.DEAD_LETTER or message.text is None:
        return False
    change = Change(
        target=Status.SENT,
        sources=frozenset({Status.DEAD_LETTER}),
        set={"sent_at": message.failed_at or iso(now)},
        guard=Guard.VERSION,
        reason="recorded sent by an operator: its ambiguous attempt taken to have gone out",
    )
    return store.transition(message, change, at=now, settings=settings)


def _settle(
    message: MessageRecord, target: Status, why: str, now: datetime, settings: Settings, *, attempts: int | None = None
) -> SendOutcome:
    stamp: dict[str, Any] = {Status.FAILED: {"failed_at": iso(now)}}.get(target, {})
    if attempts is not None:  # settled right after a failed request: that request counts as an attempt
        stamp = {**stamp, "attempts": attempts}
    change = Change(
        target=target,
        sources=frozenset({message.state}),  # queued, or a dead letter redriven past its deadline
        set={"last_error": why, **stamp},
        guard=Guard.VERSION,
    )
    if not store.transition(message, change, at=now, settings=settings):
        return SendOutcome.STALE
    count(
        {Status.CANCELLED: MetricName.REMINDERS_CANCELLED, Status.EXPIRED: MetricName.REMINDERS_EXPIRED}.get(
            target, MetricName.SMS_FAILED
        ),
        reminder_type=message.reminder_type,
        provider=settings.primary_provider.value,
    )
    logger.info(
        "message settled without sending",
        extra={"message_id": message.message_id, "status": target.value, "reason": why},
    )
    return SendOutcome(target.value)


def _defer(
    message: MessageRecord,
    until: datetime,
    why: str,
    now: datetime,
    settings: Settings,
    *,
    attempts: int | None = None,
    keep_binding: bool = False,
) -> SendOutcome:
    """Back to pending until `until` (explicitly, with the reason), or expired if that is past the deadline.

    `keep_binding`: whether its SMS may have gone out (no request and no replay was made here, so a crash before
    this delivery may have sent it): its next claim then replays that SMS instead of composing another.
    """
    decision = wait_until(until, why, parse_iso(message.deadline))
    if decision.verdict is Verdict.EXPIRE:
        return _settle(message, Status.EXPIRED, decision.reason, now, settings, attempts=attempts)
    values: dict[str, Any] = {
        "due_at": iso(until),
        "due_shard": store.shard_of(message.message_id, settings.DUE_INDEX_SHARDS),
        "last_error": why,
    }
    if not keep_binding:
        values |= _BOUND_TO_NONE  # its SMS was not taken: the next claim composes a new one
    if attempts is not None:
        values["attempts"] = attempts
    change = Change(
        target=Status.PENDING,
        sources=frozenset({Status.QUEUED}),
        set=values,
        guard=Guard.VERSION | Guard.ATTEMPTS,
        reason=f"retry after {why}" if attempts is not None else f"deferred: {why}",
    )
    if not store.transition(message, change, at=now, settings=settings):
        return SendOutcome.STALE
    return SendOutcome.RETRY if attempts is not None else SendOutcome.DEFERRED


def _after_failure(
    message: MessageRecord,
    error: ProviderError,
    attempt: int,
    provider: str,
    settings: Settings,
    rendered: RenderedText,
    zone: ZoneInfo,
    to: str,
    carried: int = 1,
) -> SendOutcome:
    now = clock.now()
    logger.warning(
        "provider did not accept",
        extra={
            "message_id": message.message_id,
            "provider": provider,
            "kind": error.kind.value,
            "code": error.code,
            "attempt": attempt,
        },
    )
    decision = after_the_failure(
        kind=error.kind,
        error=str(error),
        attempt=attempt,
        retry_floor=int(message.retry_floor),
        max_retries=settings.SMS_MAX_RETRIES,
        policy=settings.SMS_ON_AMBIGUOUS_SEND,
        delay=backoff(
            max(1, attempt - int(message.retry_floor)), settings.SMS_RETRY_DELAY_MINUTES, error.retry_after_seconds
        ),
        zone=zone,
        quiet_hours=settings.quiet_hours,
        deadline=parse_iso(message.deadline),
        now=now,
    )
    if decision.verdict is Verdict.FAIL:
        return _settle(message, Status.FAILED, decision.reason, now, settings, attempts=attempt)
    if decision.verdict is Verdict.RECORD_SENT:
        unknown_id = {"provider": provider, "provider_message_id": _stand_in_id(message, provider, to)}
        return _record_sent(
            message,
            attempt,
            unknown_id,
            rendered.text,
            rendered.segments,
            settings,
            ambiguous=str(error),
            carried=carried,
        )
    if decision.verdict is Verdict.DEAD_LETTER:
        # An ambiguous one is recorded as "sent" would be, with its text and provider: it may have gone out. Kannel's
        # DLR names the id we gave the SMS, so its receipt settles it exactly (`receipts`) before an operator sends
        # it again; Orange's names only the recipient, which another SMS's receipt may share: the operator decides.
        exact = provider == ProviderName.KANNEL.value
        taken = (
            {
                "text": rendered.text,
                "segments": rendered.segments,
                "provider": provider,
                "provider_message_id": _stand_in_id(message, provider, to) if exact else None,
                "sms_reminders": carried if carried > 1 else None,
                "ambiguous": True,
            }
            if error.kind is FailureKind.AMBIGUOUS
            else None
        )
        return _dead_letter(message, decision.reason, attempt, now, settings, extra=taken, provider=provider)
    if decision.verdict is Verdict.EXPIRE:
        return _settle(message, Status.EXPIRED, decision.reason, now, settings, attempts=attempt)
    outcome = _defer(message, decision.until or now, decision.reason, now, settings, attempts=attempt)
    if outcome is SendOutcome.RETRY:
        count(MetricName.SMS_RETRIED, reminder_type=message.reminder_type, provider=provider)
    return outcome


def _stand_in_id(message: MessageRecord, provider: str, to: str) -> str:
    """What an ambiguous send is recorded under, for its receipt to find it: Kannel's DLR names the id we gave the SMS
    (a grouped SMS's key, else the message's own); Orange's names Orange's id, which never came back, and the
    recipient, which stands in for it."""
    if provider == ProviderName.KANNEL.value:
        return message.sms_key or message.message_id
    return store.ambiguous_send_key(to)


def _throttled(
    message: MessageRecord, error: ProviderError, pacer: Pacer, zone: ZoneInfo, settings: Settings
) -> SendOutcome:
    """The provider asked us to slow down: this sender pauses, and the message waits without burning an attempt
    (throttling is back-pressure, not the message's failure; its deadline still bounds the wait)."""
    now = clock.now()
    count(MetricName.PROVIDER_THROTTLED)
    pause = timedelta(seconds=max(error.retry_after_seconds or 0.0, THROTTLE_PAUSE_SECONDS))
    pacer.pause_until(now + pause)
    return _defer(message, next_allowed(now + pause, zone, settings.quiet_hours), f"throttled: {error}", now, settings)


def _confirm_refusal(error: ProviderError, provider: str, now: datetime, settings: Settings) -> ProviderError:
    """Tell a refusal of this recipient from a refusal of the account, by the account's balance.

    Holding all sending on one number's 403 would stop every family's reminders, so the hold needs the balance
    to confirm it (no units, bundle expired, credentials refused). A balance that cannot be read decides nothing:
    the message is retried like any transient failure.
    """
    try:
        balance = provider_for(settings, provider).balance()
    except ProviderError as exc:
        if exc.kind is FailureKind.PROVIDER_WIDE:
            return ProviderError(FailureKind.PROVIDER_WIDE, error.code, f"{error.detail}; balance: {exc}")
        why = f"{error.detail}; the balance could not tell this number from the account: {exc}"
        return ProviderError(FailureKind.TRANSIENT, error.code, why, error.retry_after_seconds)
    if balance is None or not balance.can_send(now):
        left = "no balance to check" if balance is None else f"{balance.available_units} units, {balance.status}"
        return ProviderError(FailureKind.PROVIDER_WIDE, error.code, f"{error.detail} ({left})")
    units = balance.available_units
    why = f"{error.detail}; refused for this number (the account can send: {units} units left)"
    return ProviderError(FailureKind.PERMANENT, error.code, why)


def _dead_letter(
    message: MessageRecord,
    why: str,
    attempt: int,
    now: datetime,
    settings: Settings,
    *,
    extra: dict[str, Any] | None = None,
    provider: str | None = None,
) -> SendOutcome:
    # The DLQ copy goes first: a crash before the status write leaves the record to be retried, and a spare
    # copy on the DLQ is dropped as stale when redriven. The other order could strand a dead letter.
    queue.put_dead_letter(QueuedMessage(message.message_id, int(message.version) + 1), settings)
    # Not an ambiguous one (`extra`): its SMS did not go out, so it is bound to none (a revival refuses a bound one).
    change = Change(
        target=Status.DEAD_LETTER,
        sources=frozenset({Status.QUEUED}),
        set={"last_error": why, "attempts": attempt, "failed_at": iso(now), **(extra or _BOUND_TO_NONE)},
        # The version too: the DLQ copy above names version + 1, and only that copy may take the dead letter back.
        guard=Guard.VERSION | Guard.ATTEMPTS,
    )
    if not store.transition(message, change, at=now, settings=settings):
        return SendOutcome.STALE
    count(
        MetricName.SMS_DEAD_LETTERED,
        reminder_type=message.reminder_type,
        provider=provider or settings.primary_provider.value,
    )
    return SendOutcome.DEAD_LETTER


def _sent_reason(provider: str, carried: int) -> str:
    return f"sent via {provider}" + (f", one SMS for {carried} reminders" if carried > 1 else "")


# What a message the provider took an SMS for may have become meanwhile, and is recorded sent from, as read.
_CATCHES_UP = frozenset({Status.CANCELLED, Status.PENDING, Status.QUEUED, Status.DEAD_LETTER})


def _sent_change(message: MessageRecord, values: dict[str, Any], reason: str) -> Change:
    """The move to sent of a claimed message, as this claim read it; or of one that moved while the provider took
    its SMS, only as read: cancelled (one revived since is claimed again, and that claim replays this send), or
    retried, deferred or dead-lettered by a sender holding the same record, delivered twice."""
    if message.state is Status.QUEUED:
        return Change(Status.SENT, frozenset({Status.QUEUED}), values, Guard.ATTEMPTS, reason=reason)
    if message.state is Status.CANCELLED:
        values = {**values, "ended_at": None}  # not ended (the retention clock goes too): it waits for its receipt
        reason = f"{reason}, before its cancellation"
    else:
        reason = f"{reason}, by a second delivery of its record"
    return Change(Status.SENT, frozenset({message.state}), values, Guard.VERSION, reason=reason)


def _record_sent(
    message: MessageRecord,
    attempt: int,
    accepted: dict[str, Any] | None,
    text: str | None,
    segments: int | None,
    settings: Settings,
    *,
    ambiguous: str | None = None,
    carried: int = 1,
) -> SendOutcome:
    now = clock.now()
    values: dict[str, Any] = {
        "sms_reminders": carried if carried > 1 else None,
        "attempts": attempt,
        "sent_at": iso(now),
        "provider": (accepted or {}).get("provider") or settings.primary_provider.value,
        "provider_message_id": (accepted or {}).get("provider_message_id"),
        "last_error": f"ambiguous: {ambiguous}" if ambiguous else None,
        "ambiguous": True if ambiguous else None,
    }
    if text is not None:
        values["text"], values["segments"] = text, segments
    reason = f"ambiguous send taken as sent: {ambiguous}" if ambiguous else _sent_reason(values["provider"], carried)
    if not store.transition(message, _sent_change(message, values, reason), at=now, settings=settings):
        current = store.get_message(message.message_id)
        if current is not None and current.state in {Status.SENT, Status.DELIVERED, Status.FAILED}:
            return SendOutcome.ALREADY_RECORDED
        # Moved while the request was on its way (cancelled; or retried, deferred or dead-lettered by a sender that
        # had the same record, delivered twice): it went out all the same, and the record says so, so that nothing
        # sends it again (a cancelled reminder is one that no SMS carried; a sent one is never sent again).
        if (
            current is None
            or current.state not in _CATCHES_UP
            or not store.transition(current, _sent_change(current, values, reason), at=now, settings=settings)
        ):
            logger.error(
                "provider accepted but the message changed meanwhile",
                extra={"message_id": message.message_id, "status": current.status if current else None},
            )
            return SendOutcome.SENT_UNRECORDED
    type_, provider = message.reminder_type, str(values["provider"])
    count(MetricName.SMS_SENT, reminder_type=type_, provider=provider)
    count(MetricName.SMS_ACCEPTED, 1 / carried, reminder_type=type_, provider=provider)
    lateness = max(0.0, (now - parse_iso(message.scheduled_at)).total_seconds())
    measure(MetricName.SEND_LATENESS_SECONDS, lateness, reminder_type=type_, provider=provider)
    logger.info(
        "sms sent",
        extra={
            "message_id": message.message_id,
            # An ambiguous send's stand-in id is the recipient's hash: a phone, to anyone with the log.
            "sms": None if ambiguous else values["provider_message_id"],
            "attempt": attempt,
            "ambiguous": bool(ambiguous),
        },
    )
    return SendOutcome.AMBIGUOUS_SENT if ambiguous else SendOutcome.SENT
