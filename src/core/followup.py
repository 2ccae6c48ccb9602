"""Families to call, and whether the reminders worked: keeping each appointment's `core.outcomes` state.

When the state changes, and who changes it (never a scan):

- **planning** (`note_appointment`, from every reconciliation of an appointment): the dose scheduled, rescheduled,
  given or cancelled. A scheduled dose whose family is not reached is *watched* from its overdue time (the start of
  the day after its due date, in the family's zone); a dose given or cancelled closes an open follow-up.
- **a delivery receipt** (`note_delivered`): the first reminder delivered marks the family reached (once).
- **a reminder that ends without reaching the family** (failed, dead letter, expired, cancelled): `store.transition`
  moves the watch to now with one conditional write (`store.rearm_follow_up`), once the dose is overdue.
- **the follow-up pass** (`run_pass`, the `follow_up_pass` function, every FOLLOW_UP_PASS_MINUTES on a schedule of
  its own, apart from the dispatcher's so that it never delays a reminder): Queries the sparse `follow_up` index for
  states whose time has come. For a watched family it reads the appointment, the patient and the dose's reminders
  and decides (`judge`): reached after all; wait (a reminder is still pending, queued or dead-lettered: until its
  deadline; the dose not overdue yet: until then); stop (a reminder the provider accepted has no receipt yet, or an
  ambiguous send was dead-lettered: the family may have got it; a failure receipt asks again, and the BACKSTOP looks
  once more 24 h after the last send, in case that re-arm was lost, and calls if every such send was a request the
  provider never answered, still unconfirmed); or open the follow-up, with its reasons.
  It also publishes what the outbox holds.

**Once, never lost.** Opening is a conditional write on the state's version that records the follow-up as open and
not yet announced; FollowUpNeeded is published after it, and only then marked published. A crash between leaves
the state in the pass's slot and the next run publishes it; a crash after the publish publishes it again, with
the same `follow_up_id` (the clinic system de-duplicates on it). FollowUpClosed goes the same way. Only the
pass publishes them (one function with `events:PutEvents`).

**Its cadence.** A follow-up is about a dose a day overdue, and a health worker's call; a pass every 15 minutes
(the default) tells the clinic system soon enough, and the pass's index reads, one per shard, are made 15 times
less often than the dispatcher's every-minute run would make them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from core import clock, notify, outcomes, store
from core.lifecycle import OUTSTANDING, Status
from core.metric_names import MetricName
from core.observability import count, logger
from core.outcomes import ADMINISTERED, OPEN, Appointment, AppointmentState
from core.phone import mask_phone
from core.settings import Settings
from core.statistics import outcome_figures
from core.store import AppointmentRecord, MessageRecord, PatientRecord, iso, parse_iso
from core.texts import TEXT_ERRORS
from core.timing import ReminderType, local_to_utc
from core.wanted import why_not_wanted

REMINDER_TYPES: Final[frozenset[str]] = frozenset(t.value for t in ReminderType)
# How reminders are named to people (reports, reasons, the clinic system).
LABELS: Final[dict[str, str]] = {
    ReminderType.SEVEN_DAY.value: "7 days before",
    ReminderType.ONE_DAY.value: "1 day before",
    ReminderType.OVERDUE.value: "1 day after",
}
# States one pass handles (a few requests each, about 40 ms: 2,000 fit its 120 s); the rest wait for the next pass,
# 15 min later. A campaign's 100,000 doses with a fifth of the families unreached bring 20,000 states due at once.
PASS_LIMIT: Final[int] = 2_000
PASS_TIME_MARGIN_MS: Final[int] = 15_000  # a state takes a few requests; stop with this much of the timeout left
# A state the pass failed on waits this long in its slot, so that states failing for good (a record an old version
# wrote) are not taken first at every pass; a throttle's family is called 45 minutes late at most. Under an hour, so
# that one failing for good errs in every hour of FollowUpErrorsAlarm's (it does not flap).
SET_ASIDE_FOR: Final[timedelta] = timedelta(minutes=45)
ATTEMPTS: Final[int] = 4  # conditional writes tried against concurrent changes before giving up until next time
UNDELIVERABLE_RECEIPTS: Final[frozenset[str]] = frozenset({"DeliveryImpossible", "RejectedBySmsc", "Undelivered"})
# A "stop" (a reminder that may have gone out, no receipt yet) is looked at once more this long after the last send
# (or an ambiguous dead letter's deadline): a failure whose re-arm was lost (a crash between the status write and
# the re-arm; Kannel never retries a DLR) or a receipt that never comes. Past it, still unconfirmed: no more.
BACKSTOP: Final[timedelta] = timedelta(hours=24)


def overdue_at(due_date: str, zone: str) -> str:
    """When a dose becomes overdue: the start of the day after its due date, local time."""
    return iso(local_to_utc(date.fromisoformat(due_date) + timedelta(days=1), time(0, 0), ZoneInfo(zone)))


def families_in(rows: Iterable[Mapping[str, Any]]) -> int:
    """How many families follow-up rows (one per appointment) name: a child with several open appointments (one per
    vaccine of a visit) is one call."""
    return len({str(row.get("patient_id")) for row in rows})


def follow_up_id(appointment_id: str, episode: int = 0) -> str:
    """The id both events of an appointment's follow-up carry: the clinic system de-duplicates on it. A follow-up
    after the first (its dose due again after a correction: `AppointmentState.episode`) is `followup-<id>-<n>`."""
    return f"followup-{appointment_id}" + (f"-{episode + 1}" if episode else "")


# ---------------------------------------------------------------------------------------------- writing a state

_UNREAD: Final[Any] = object()


def _update(
    appointment_id: str,
    change: Callable[[AppointmentState | None], AppointmentState | None],
    settings: Settings,
    state: AppointmentState | None = _UNREAD,
) -> AppointmentState | None:
    """Apply `change` to the stored state with a conditional write, re-reading after a concurrent change; the state
    as written (or as it stands when `change` has nothing to do)."""
    for _ in range(ATTEMPTS):
        old = store.get_appointment_state(appointment_id) if state is _UNREAD else state
        new = change(old)
        if new is None or new == old:
            return old
        if store.put_appointment_state(old, new, settings.DUE_INDEX_SHARDS):
            _count_metrics(old, new)
            return new
        state = _UNREAD
    logger.warning("appointment state kept changing; left for the next run", extra={"appointment_id": appointment_id})
    return None


def _count_metrics(old: AppointmentState | None, new: AppointmentState) -> None:
    if new.reached and not (old is not None and old.reached):
        count(MetricName.FAMILIES_REACHED)
    if new.status == ADMINISTERED and not (old is not None and old.status == ADMINISTERED):
        count(MetricName.DOSES_GIVEN_REACHED if new.reached else MetricName.DOSES_GIVEN_NOT_REACHED)
    if new.follow_up == OPEN and (old is None or old.follow_up is None):
        count(MetricName.FOLLOW_UPS_OPENED)
    if new.follow_up == outcomes.CLOSED and old is not None and old.follow_up == OPEN:
        count(MetricName.FOLLOW_UPS_CLOSED)


def _view(appointment: AppointmentRecord) -> Appointment:
    return Appointment(
        appointment.appointment_id,
        appointment.patient_id,
        appointment.clinic,
        appointment.due_date,
        appointment.status,
        appointment.administered_on,
    )


def note_appointment(
    appointment: AppointmentRecord,
    patient: PatientRecord | None,
    settings: Settings,
    now: datetime,
    delivered: MessageRecord | None = None,
) -> AppointmentState | None:
    """Planning applied an event to the appointment (as now stored): bring its state in line (one read; a write
    only when something changed). Returns the state as it now stands (None when there is none, or it kept
    changing under us). `delivered`: a reminder of its dose found delivered, which reached the family even if its
    receipt died before noting it (Kannel never posts a receipt again)."""
    if appointment.patient_id == store.UNKNOWN_PATIENT or not appointment.due_date:
        return None  # closed before its schedule told us what it is: the schedule, when it comes, notes it
    due = overdue_at(appointment.due_date, patient.timezone if patient is not None else settings.APP_TIMEZONE)
    view = _view(appointment)

    def reached(state: AppointmentState) -> AppointmentState:
        if delivered is None or not outcomes.about_this_dose(state, delivered.due_date, delivered.patient_id):
            return state
        return outcomes.with_delivery(state, delivered.reminder_type, delivered.delivered_at or iso(now)) or state

    def synced(old: AppointmentState | None) -> AppointmentState:
        # Reached as the dose stood (before a dose given, say), or as it stands now (a date moved back to the one the
        # delivered reminder was about).
        return reached(outcomes.synced(reached(old) if old is not None else None, view, due, iso(now)))

    return _update(appointment.appointment_id, synced, settings)


def note_delivered(message: MessageRecord, settings: Settings, now: datetime) -> None:
    """A reminder was delivered: the family is reached (the first delivery counts, once), if it spoke of the dose as
    it now stands (a receipt coming after a reschedule is about the old date)."""
    if message.reminder_type not in REMINDER_TYPES:
        return

    def reached(old: AppointmentState | None) -> AppointmentState | None:
        if old is None or not outcomes.about_this_dose(old, message.due_date, message.patient_id):
            return None
        return outcomes.with_delivery(old, message.reminder_type, iso(now))

    _update(message.appointment_id, reached, settings)


# ---------------------------------------------------------------------------------------------- judging a family


@dataclass(frozen=True)
class Verdict:
    """What the pass does with a watched family: `reached` (by `reminder_type`), `wait` (until `until`), `stop`
    watching, or `call` (open the follow-up with `reasons`)."""

    action: str
    until: str | None = None
    reminder_type: str | None = None
    reasons: tuple[str, ...] = field(default=())


def judge(messages: Iterable[MessageRecord], no_reminder: str | None, overdue: str, now: str) -> Verdict:
    """Pure: the verdict on a family from its dose's reminders (`messages`: those of the current due date and
    patient), why none was planned (`no_reminder`, when none was), the dose's overdue time and now."""
    reminders = sorted(messages, key=lambda m: (m.scheduled_at, m.message_id))
    delivered = [m for m in reminders if m.status == Status.DELIVERED]
    if delivered:
        return Verdict("reached", reminder_type=min(delivered, key=lambda m: m.delivered_at or "").reminder_type)
    # A dead letter past its deadline has ended (the dispatcher expires it; an ambiguous one waits for an operator),
    # and so has a claimed one: its send queue record kept failing and sits in the send DLQ (a broken sender).
    waiting = [m.deadline for m in reminders if m.status in OUTSTANDING and not _ended(m, now)]
    if now < overdue or waiting:
        return Verdict("wait", until=max([overdue, *waiting]))
    unconfirmed = [m for m in reminders if _may_have_gone_out(m)]
    if unconfirmed:
        backstop = iso(parse_iso(max(map(_unconfirmed_since, unconfirmed))) + BACKSTOP)
        if backstop > now:
            return Verdict("stop", until=backstop)
        if not all(_unanswered(m) for m in unconfirmed):
            return Verdict("stop")
        # Every request went unanswered and nothing confirmed one since (a hung provider): most likely not arrived.
    reasons = [reason for m in reminders if (reason := reason_of(m)) is not None]
    if not reasons:
        reasons = [f"no reminder: {no_reminder or 'scheduled too late for any reminder to go out'}"]
    return Verdict("call", reasons=tuple(dict.fromkeys(reasons)))


def _ended(message: MessageRecord, now: str) -> bool:
    return message.status in {Status.DEAD_LETTER, Status.QUEUED} and message.deadline <= now


def _may_have_gone_out(message: MessageRecord) -> bool:
    """Accepted by the provider with no receipt yet, or dead-lettered after an ambiguous send (its text kept)."""
    return message.status == Status.SENT or (message.status == Status.DEAD_LETTER and message.text is not None)


def _unanswered(message: MessageRecord) -> bool:
    """Recorded sent after a request the provider never answered (`SMS_ON_AMBIGUOUS_SEND=assume_sent`), no receipt."""
    return message.status == Status.SENT and bool(message.ambiguous)


def _unconfirmed_since(message: MessageRecord) -> str:
    if message.status == Status.SENT:
        return message.sent_at or message.scheduled_at
    return message.deadline  # an ambiguous dead letter: until then an operator could redrive it


def reason_of(message: MessageRecord) -> str | None:
    """Why this reminder did not reach the family, in words; None when it says nothing about that (a reminder
    cancelled for a reschedule or superseded by a later one)."""
    label = LABELS.get(message.reminder_type, message.reminder_type)
    error = message.last_error or ""
    if message.status == Status.FAILED:
        return f"{label}: {_why_failed(message, error)}"
    if _unanswered(message):
        return f"{label}: the SMS provider never answered its request, and no receipt came"
    if message.status == Status.EXPIRED:
        if error.startswith("superseded"):
            return None
        if error.startswith("dead letter"):
            return f"{label}: sending kept failing ({error})"
        return f"{label}: could not be sent before its deadline ({error or 'deadline passed'})"
    if message.status == Status.DEAD_LETTER:
        return f"{label}: sending kept failing ({error or 'dead letter'})"
    if message.status == Status.QUEUED:
        return f"{label}: not sent before its deadline, its send queue record kept failing (in the send DLQ)"
    if message.status == Status.CANCELLED and "opted out" in error:
        return f"{label}: not sent, the family opted out of SMS"
    if message.status == Status.CANCELLED and "patient unknown" in error:
        return f"{label}: not sent, no usable phone"
    return None


def _why_failed(message: MessageRecord, error: str) -> str:
    if message.receipt_status in UNDELIVERABLE_RECEIPTS:
        return f"undeliverable, the phone could not be reached ({message.receipt_status})"
    if error.startswith(TEXT_ERRORS):  # no request was made: the program's texts or settings, not the provider
        return f"not sent: the text could not be composed ({error})"
    return f"refused by the SMS provider ({error or message.receipt_status or 'no reason given'})"


def _no_reminder(patient: PatientRecord | None, appointment: AppointmentRecord) -> str:
    why = why_not_wanted(patient, appointment)
    if why is None:
        return "scheduled too late for any reminder to go out"
    if "opted out" in why:
        return "the family opted out of SMS"
    if patient is None:
        return "no usable phone (no patient record)"
    return why


# ---------------------------------------------------------------------------------------------- the pass


@dataclass
class PassResult:
    """What one pass did."""

    looked_at: int = 0
    opened: int = 0
    published: int = 0
    errors: int = 0
    out_of_time: bool = False  # stopped before the states' end to finish within the Lambda's timeout


def run_pass(settings: Settings, remaining_ms: Callable[[], int] | None = None) -> PassResult:
    """One scheduled follow-up pass, now; `remaining_ms`: the Lambda's time left (the context's)."""
    store.bind(settings)
    return run_due(settings, clock.now(), remaining_ms)


def run_due(settings: Settings, now: datetime, remaining_ms: Callable[[], int] | None = None) -> PassResult:
    """The pass: every state whose time has come by `now`, up to PASS_LIMIT (see the module's docstring), while
    more than PASS_TIME_MARGIN_MS is left (a backlog, a slow EventBridge): the states not looked at stay in the
    index for the next pass, and this one ends cleanly with its metrics."""
    result = PassResult()
    states, unreadable = store.follow_ups_due(settings.DUE_INDEX_SHARDS, now, PASS_LIMIT)
    _log_unreadable(unreadable)
    for item in unreadable:
        result.errors += 1
        _set_aside(item.appointment_id, item.version, settings, now)
    for state in states:
        if remaining_ms is not None and remaining_ms() < PASS_TIME_MARGIN_MS:
            result.out_of_time = True
            logger.warning("follow-up pass out of time; the rest waits for the next pass", extra=result.__dict__)
            break
        result.looked_at += 1
        try:
            if not state.unpublished:
                state = _look(state, settings, now) or state
                result.opened += state.follow_up == OPEN and not state.needed_published
            result.published += _publish(state, settings, now)
        except notify.EventNotPublished as exc:  # left in the pass's slot: the next run tries again
            result.errors += 1
            extra = {"appointment_id": state.appointment_id, "error": str(exc)}
            logger.error("follow-up event not published", extra=extra)
        except Exception as exc:  # one state's error (bad data, a throttle) must not stop the pass
            # The error's type only: its text could carry a record's data (a phone).
            result.errors += 1
            extra = {"appointment_id": state.appointment_id, "error": type(exc).__name__}
            logger.error("follow-up state not handled", extra=extra)
            _set_aside(state.appointment_id, state.version, settings, now)
    if result.looked_at:
        logger.info("follow-up pass", extra=result.__dict__)
    count(MetricName.FOLLOW_UP_ERRORS, result.errors)
    return result


def _log_unreadable(unreadable: list[store.UnreadableState]) -> None:
    for item in unreadable:
        logger.error("follow-up state unreadable", extra={"appointment_id": item.appointment_id, "error": item.error})


def _set_aside(appointment_id: str, version: int, settings: Settings, now: datetime) -> None:
    """Move a state the pass failed on (as read at `version`) to SET_ASIDE_FOR later in its slot, so that the states
    behind it are looked at; if even that fails, it stays where it is for the next pass."""
    try:
        store.defer_follow_up(appointment_id, version, now + SET_ASIDE_FOR, settings.DUE_INDEX_SHARDS)
    except Exception as exc:
        logger.error(
            "follow-up state not set aside", extra={"appointment_id": appointment_id, "error": type(exc).__name__}
        )


def _look(state: AppointmentState, settings: Settings, now: datetime) -> AppointmentState | None:
    """Judge one watched family and write what follows."""
    appointment = store.get_appointment(state.appointment_id)
    if appointment is None:
        return _update(state.appointment_id, _unwatched, settings, state)
    patient = store.get_patient(appointment.patient_id)
    zone = patient.timezone if patient is not None else settings.APP_TIMEZONE
    view, due = _view(appointment), overdue_at(appointment.due_date, zone)
    if not outcomes.synced(state, view, due, iso(now)).watching:
        # Planning's own note was lost (a crash between two writes): made good here.
        return _update(
            state.appointment_id, _as_judged(state, lambda s: outcomes.synced(s, view, due, iso(now))), settings, state
        )
    reminders = store.reminders_of(appointment.appointment_id, [appointment.due_date], [appointment.patient_id])
    verdict = judge(reminders, _no_reminder(patient, appointment), due, iso(now))
    phone = mask_phone(patient.phone) if patient is not None else None
    follow = _as_judged(state, lambda s: _follow(s, verdict, phone, settings, now))
    return _update(state.appointment_id, follow, settings, state)


def _as_judged(
    judged: AppointmentState, change: Callable[[AppointmentState], AppointmentState | None]
) -> Callable[[AppointmentState | None], AppointmentState | None]:
    """`change`, applied only to the state the verdict was judged on: after a version conflict (a failure receipt
    re-armed the watch, planning wrote a reschedule) the verdict is stale, and writing it would undo that change
    (a "stop" over a re-arm: the family never followed up). The state as it now stands is left in the pass's slot
    for the next run to judge afresh."""

    def guarded(current: AppointmentState | None) -> AppointmentState | None:
        return change(current) if current is not None and current.version == judged.version else None

    return guarded


def _follow(
    state: AppointmentState | None, verdict: Verdict, phone: str | None, settings: Settings, now: datetime
) -> AppointmentState | None:
    """The state a verdict leads to."""
    if state is None:
        return None
    if verdict.action == "reached" and verdict.reminder_type is not None:
        return outcomes.with_delivery(state, verdict.reminder_type, iso(now))  # the delivery's note was lost
    if verdict.action == "wait":
        floor = iso(now + timedelta(minutes=settings.FOLLOW_UP_PASS_MINUTES))
        return outcomes.watched_from(state, max(verdict.until or floor, floor))
    if verdict.action == "stop":
        return outcomes.watched_from(state, verdict.until)  # the backstop, or None once past it
    return outcomes.opened(state, verdict.reasons, phone, iso(now))


def _unwatched(state: AppointmentState | None) -> AppointmentState | None:
    return outcomes.watched_from(state, None) if state is not None else None


def _publish(state: AppointmentState, settings: Settings, now: datetime) -> int:
    """Publish what the state's outbox holds, marking each event published after it went out; how many went."""
    done = 0
    current: AppointmentState | None = state
    while current is not None and current.unpublished:
        kind = current.unpublished[0]
        detail_type = notify.DetailType.FOLLOW_UP_NEEDED if kind == "needed" else notify.DetailType.FOLLOW_UP_CLOSED
        notify.publish(detail_type, event_detail(current, kind), now, settings)
        done += 1

        def mark(s: AppointmentState | None, kind: str = kind) -> AppointmentState | None:
            return outcomes.published(s, kind) if s is not None and s.unpublished[:1] == (kind,) else None

        current = _update(current.appointment_id, mark, settings, current)
    return done


def event_detail(state: AppointmentState, kind: str) -> dict[str, Any]:
    """The `detail` of FollowUpNeeded (`kind` "needed") or FollowUpClosed ("closed")."""
    detail: dict[str, Any] = {
        "follow_up_id": follow_up_id(state.appointment_id, state.episode),
        "patient_id": state.patient_id,
        "appointment_id": state.appointment_id,
        "clinic": state.clinic,
        "due_date": state.due_date,
    }
    if kind == "needed":
        return {**detail, "reasons": list(state.reasons), "phone": state.phone, "at": state.follow_up_at}
    return {
        **detail,
        "why": state.closed_why,
        "administered_on": state.administered_on,
        "opened_at": state.follow_up_at,
        "at": state.closed_at,
    }


# ---------------------------------------------------------------------------------------------- reading


def open_follow_ups(
    settings: Settings, *, clinic: str | None = None, since: datetime | None = None
) -> list[AppointmentState]:
    """The open follow-ups, oldest first (`rappel followup`)."""
    store.bind(settings)
    states, unreadable = store.open_follow_ups(settings.DUE_INDEX_SHARDS, clinic=clinic, since=since)
    _log_unreadable(unreadable)
    return states


def follow_up_row(state: AppointmentState) -> dict[str, Any]:
    """One open follow-up as listed (`rappel followup`, `rappel simulate`'s `follow_ups`)."""
    return {
        "patient_id": state.patient_id,
        "appointment_id": state.appointment_id,
        "clinic": state.clinic,
        "due_date": state.due_date,
        "reasons": list(state.reasons),
        "phone": state.phone,
        "at": state.follow_up_at,
    }


def outcome_report(settings: Settings) -> dict[str, Any]:
    """The outcome counters: the two groups in total, and per clinic and reminder type."""
    store.bind(settings)
    return outcome_figures()


def parse_since(text: str) -> datetime:
    """A `--since` date (YYYY-MM-DD, UTC midnight) or instant (ISO-8601)."""
    return parse_iso(text if "T" in text else f"{text}T00:00:00Z")
