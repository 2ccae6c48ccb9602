"""From clinic events to reminder messages: create, cancel and replan, idempotently.

Every event ends in one reconciliation: given the patient and the appointment as stored now, make the
appointment's messages what they should be. Re-running it changes nothing, so a replayed event, a retry
after a crash between two writes, or events arriving out of order all converge on the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from core import clock, followup, outcomes, sending, store
from core.events import (
    AppointmentCancelled,
    ClinicEvent,
    DoseAdministered,
    DoseScheduled,
    InvalidEvent,
    PatientUpserted,
    parse_event,
)
from core.lifecycle import OUTSTANDING, Status
from core.metric_names import MetricName
from core.observability import count, logger
from core.retry import patiently
from core.settings import Settings
from core.store import AppointmentRecord, Change, Guard, MessageRecord, PatientRecord, iso
from core.timing import plan_reminders
from core.wanted import is_confirmation, why_not_wanted


@dataclass
class PlanningResult:
    """What one event (or a batch of them) did."""

    applied: int = 0
    ignored: int = 0
    rejected: int = 0
    created: int = 0
    cancelled: int = 0
    replanned: int = 0
    revived: int = 0
    errors: list[str] = field(default_factory=list)

    def merge(self, other: PlanningResult) -> None:
        """Add another result's figures to this one."""
        for name in ("applied", "ignored", "rejected", "created", "cancelled", "replanned", "revived"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors


def handle_clinic_event(envelope: object, settings: Settings) -> PlanningResult:
    """Validate and apply one EventBridge clinic event; a bad one is refused, logged and counted, never raised."""
    now = clock.now()
    store.bind(settings)
    try:
        event = parse_event(
            envelope,
            default_region=settings.SMS_DEFAULT_REGION,
            now=now,
            max_years_ahead=settings.MAX_DUE_DATE_YEARS_AHEAD,
        )
    except InvalidEvent as exc:
        count(MetricName.EVENTS_REJECTED)
        logger.warning("clinic event rejected", extra={"field": exc.field, "reason": exc.reason})
        return PlanningResult(rejected=1, errors=[str(exc)])
    return apply_event(event, settings, now)


def apply_event(event: ClinicEvent, settings: Settings, now: datetime) -> PlanningResult:
    """Apply one validated event."""
    detail = event.detail
    # The appointment, its outcome state and its patient in one read, where the event names them.
    appointment_ids = [] if isinstance(detail, PatientUpserted) else [detail.appointment_id]
    patient_ids = [detail.patient_id] if isinstance(detail, DoseScheduled) else []
    with store.read_ahead(appointment_ids=appointment_ids, patient_ids=patient_ids):
        result = _apply(event, settings, now)
    logger.info(
        "clinic event applied",
        extra={
            "detail_type": event.detail_type.value,
            "event_id": event.event_id,
            "patient_id": getattr(detail, "patient_id", None),
            "appointment_id": getattr(detail, "appointment_id", None),
            "messages_created": result.created,
            "cancelled": result.cancelled,
            "replanned": result.replanned,
            "revived": result.revived,
            "ignored": result.ignored,
        },
    )
    return result


# PatientUpserted's optional fields, each kept as stored when an event leaves it out.
KEPT_WHEN_LEFT_OUT = frozenset({"timezone", "preferred_hour", "discreet"})


def _apply(event: ClinicEvent, settings: Settings, now: datetime) -> PlanningResult:
    result = PlanningResult()
    event_at, event_id = iso(event.event_at), event.event_id
    detail = event.detail
    if isinstance(detail, PatientUpserted):
        patient = PatientRecord(
            detail.patient_id,
            phone=detail.phone,
            timezone=detail.timezone or settings.APP_TIMEZONE,
            language=detail.language,
            sms_opt_in=detail.sms_opt_in,
            display_name=detail.display_name,
            preferred_hour=detail.preferred_hour,
            discreet=detail.discreet or None,
            event_at=event_at,
            event_id=event_id,
        )
        # An optional field the event leaves out keeps its stored value (a clinic system that does not know it, or
        # sends only what changed); one given, even as null, is set.
        # A null `discreet` too: only a clinic's `false` puts the child's name back on a phone others may read.
        keep = frozenset(KEPT_WHEN_LEFT_OUT - detail.model_fields_set) | (
            {"discreet"} if detail.discreet is None else set()
        )
        as_stored = store.save_patient(patient, keep=keep, default_zone=settings.APP_TIMEZONE)
        written = as_stored is not None
        _count_write(result, written)
        renewed, stopped = _renews(written and detail.sms_opt_in and detail.sms_opt_in_renewed, detail.phone, event_at)
        if renewed and stopped is not None:
            store.clear_number_stop(detail.phone, stopped)
        result.merge(reconcile_patient(detail.patient_id, settings, now, as_stored))
        if renewed:  # the stop was the number's: its other patients get their reminders back too (on a retry too)
            for other in store.patients_with_phone(detail.phone):
                if other.patient_id == detail.patient_id:
                    continue
                if consent_changes(other, True):
                    # The renewal lifts what the number's stop did, as `rappel optin` would; unless a later change
                    # of its own came since.
                    store.set_opt_in(other.patient_id, True, event_at, "renewal-optin", only_after=other.event_id)
                result.merge(reconcile_patient(other.patient_id, settings, now))
    elif isinstance(detail, DoseScheduled):
        appointment = AppointmentRecord(
            detail.appointment_id,
            patient_id=detail.patient_id,
            vaccine=detail.vaccine,
            dose=detail.dose,
            due_date=detail.due_date.isoformat(),
            clinic=detail.clinic or None,
            status="scheduled",
            event_at=event_at,
            event_id=event_id,
        )
        previous = store.get_appointment(detail.appointment_id)
        saved = store.save_appointment(appointment, previous)
        written = saved
        if (
            not written
            and previous is not None
            and (previous.patient_id == store.UNKNOWN_PATIENT or previous.filled_at is not None)
        ):
            # The dose was given (or the appointment cancelled) before this older schedule arrived: the schedule
            # fills in what the appointment is (the latest schedule, if several come late), the close stands.
            written = store.fill_in_closed_appointment(appointment)
        _count_write(result, written)
        stored = appointment if saved else None  # what we wrote is what is stored; else read it again
        new = saved and previous is None
        reconcile = reconcile_appointment(detail.appointment_id, settings, now, before=previous, stored=stored, new=new)
        result.merge(reconcile)
    else:
        result.merge(_close_appointment(detail, event_at, event_id, settings, now))
    return result


def _renews(asked: bool, phone: str, event_at: str) -> tuple[bool, store.NumberStop | None]:
    """Whether a renewed consent stamped `event_at` lifts the number's stop, and that stop as read (None: not
    stopped): not one the family wrote after it (a STOP after the clinic recorded the renewal is the family's latest
    word, whichever event arrives last)."""
    if not asked:
        return False, None
    stop = store.number_stop(phone)
    return stop is None or stop.at < event_at, stop


def _count_write(result: PlanningResult, written: bool) -> None:
    if written:
        result.applied += 1
    else:
        result.ignored += 1  # an older event than the one already applied


def _close_appointment(
    detail: DoseAdministered | AppointmentCancelled, event_at: str, event_id: str, settings: Settings, now: datetime
) -> PlanningResult:
    result = PlanningResult()
    stored = store.get_appointment(detail.appointment_id)
    if stored is not None:
        current = store.copy_appointment(stored)
        if stored.patient_id != store.UNKNOWN_PATIENT and stored.filled_at is None:
            # What the appointment is came from the schedule stored: a newer one that arrives after this close may
            # still fill it in (`fill_in_closed_appointment`), an older one not.
            current.filled_at = stored.event_at
    else:
        # Closed before its schedule arrived (out of order, or a late sync): keep the fact, so that the older
        # schedule, when it comes, plans nothing. What the appointment is, its schedule will fill in.
        current = AppointmentRecord(
            detail.appointment_id, patient_id=store.UNKNOWN_PATIENT, vaccine="", dose=0, due_date="", status=""
        )
    current.event_at, current.event_id = event_at, event_id
    if isinstance(detail, DoseAdministered):
        current.status, current.administered_on = "administered", detail.administered_on.isoformat()
    else:
        current.status = "cancelled"
    saved = store.save_appointment(current, stored)
    _count_write(result, saved)
    result.merge(reconcile_appointment(detail.appointment_id, settings, now, stored=current if saved else None))
    return result


def reconcile_patient(
    patient_id: str, settings: Settings, now: datetime, stored: PatientRecord | None = None
) -> PlanningResult:
    """Bring the messages of every appointment of a patient in line with the stored patient (`stored`: the patient
    as the caller just wrote it, else read)."""
    result = PlanningResult()
    appointment_ids = store.appointment_ids_of(patient_id)
    with store.read_ahead(appointment_ids=appointment_ids, patient_ids=[] if stored is not None else [patient_id]):
        for appointment_id in appointment_ids:
            result.merge(reconcile_appointment(appointment_id, settings, now, patient=stored))
    return result


def replan_waiting(settings: Settings, now: datetime) -> PlanningResult:
    """Every appointment with a reminder still waiting to be sent brought in line with the rules as they are now.

    A send time and deadline are computed when a reminder is planned and kept: new zone rules (a tzdata release)
    or a new REMINDER_*_TIME, quiet hours or lateness reach a planned reminder only when an event for its
    appointment or patient comes, which for a dose due months ahead may be never. An operator runs this after such
    a change (`rappel replan`); it changes nothing when nothing did."""
    appointment_ids = sorted(
        {m.appointment_id for m in store.waiting_in_due_index(settings.DUE_INDEX_SHARDS) if not is_confirmation(m)}
    )
    result = PlanningResult()
    for appointment_id in appointment_ids:
        result.merge(reconcile_appointment(appointment_id, settings, now))
    return result


class Move(StrEnum):
    """What reconciliation does to one reminder of an appointment."""

    CREATE = "create"
    REVIVE = "revive"  # a cancelled reminder whose cause was reversed
    CANCEL = "cancel"
    REPLAN = "replan"  # a pending reminder whose schedule or recipient changed


@dataclass(frozen=True)
class WantedReminder:
    """A reminder that should exist for the appointment as it stands, and its schedule."""

    reminder_type: str
    scheduled_at: datetime
    deadline: datetime


def decide(
    existing: Mapping[str, MessageRecord], wanted: Mapping[str, WantedReminder], recipient: str, now: datetime
) -> list[tuple[Move, str]]:
    """The moves that bring an appointment's reminders (`existing`, by id) in line with `wanted` (by id). Pure.

    A settled reminder is never touched, but a cancelled one that is wanted again comes back (the store then also
    requires that nothing was sent). One not wanted is cancelled while outstanding; a pending one whose schedule or
    recipient changed is replanned; a wanted one that does not exist is created. A wanted one whose deadline has
    passed is neither created, revived nor replanned, and not cancelled either: it is still this appointment's
    reminder (a dead letter waiting for an operator, one the dispatcher will expire), not one a change made unwanted.
    One in a status this version does not know is left alone.
    """
    moves: list[tuple[Move, str]] = []
    open_ = {message_id for message_id, reminder in wanted.items() if reminder.deadline > now}
    for message_id, message in existing.items():
        state = message.known_state  # None: a newer version's status, left to it
        if state is Status.CANCELLED and message_id in open_:
            moves.append((Move.REVIVE, message_id))
        elif state in OUTSTANDING and message_id not in wanted:
            moves.append((Move.CANCEL, message_id))
        elif state is Status.PENDING and message_id in open_ and _replanned(message, wanted[message_id], recipient):
            moves.append((Move.REPLAN, message_id))
    moves += [(Move.CREATE, message_id) for message_id in open_ if message_id not in existing]
    return moves


def _replanned(message: MessageRecord, reminder: WantedReminder, recipient: str) -> bool:
    values = _pending_values(reminder, recipient)
    return any(getattr(message, name) != value for name, value in values.items())


def _pending_values(reminder: WantedReminder, recipient: str) -> dict[str, str]:
    return {"scheduled_at": iso(reminder.scheduled_at), "deadline": iso(reminder.deadline), "recipient": recipient}


def reconcile_appointment(
    appointment_id: str,
    settings: Settings,
    now: datetime,
    *,
    before: AppointmentRecord | None = None,
    stored: AppointmentRecord | None = None,
    patient: PatientRecord | None = None,
    new: bool = False,
) -> PlanningResult:
    """Create, replan, revive or cancel the messages of one appointment so they match what should be sent.

    `before`: the appointment as stored before this event: the reminders of its patient and due date then (a move
    to another patient, a reschedule) are looked at too, and cancelled. `stored` and `patient`: the appointment and
    its patient as the caller just wrote them (each read again when not given, or not the appointment's patient).
    `new`: the caller has just created the appointment, so it has no reminder yet (each is created after its
    appointment is stored): none is read. A concurrent replay of the same event creates nothing twice: every
    creation is conditional on the message not existing.
    """
    result = PlanningResult()
    appointment = stored if stored is not None else store.get_appointment(appointment_id)
    if appointment is None:
        return result
    owners = {appointment.patient_id} | ({before.patient_id} if before is not None else set())
    due_dates = set() if new else {appointment.due_date} | ({before.due_date} if before is not None else set())
    checked: PatientRecord | str = appointment.patient_id
    if patient is not None and patient.patient_id == appointment.patient_id:
        checked = patient
    # One read for the reminders and what the checks below ask of the patient (`why_not_wanted`).
    reminders = store.reminders_of(
        appointment_id,
        due_dates,
        owners - {store.UNKNOWN_PATIENT},
        checked=checked,
        patient_written_since=stored is not None,
    )
    patient = checked if isinstance(checked, PatientRecord) else store.get_patient(checked)
    if patient is None and appointment.patient_id != store.UNKNOWN_PATIENT:
        # Its patient's own event may be being handled at this moment (a register import sends both together): that
        # handler lists the patient's appointments from an eventually consistent index, which may not show this one
        # yet. Looking again for a few seconds, longer than the index lags, leaves one of the two to plan it.
        patient = patiently(
            lambda: store.get_patient(appointment.patient_id, fresh=True), lambda found: found is not None
        )
    # Its outcome and follow-up state first: what the cancellations below ask of it.
    delivered = next(
        (
            m
            for m in reminders
            if m.known_state is Status.DELIVERED
            and (m.patient_id, m.due_date) == (appointment.patient_id, appointment.due_date)
        ),
        None,
    )
    state = followup.note_appointment(appointment, patient, settings, now, delivered)
    if patient is None:
        return result  # planned when the patient arrives (events may come in any order)
    result = _bring_in_line({m.message_id: m for m in reminders}, patient, appointment, state, settings, now)
    if result.cancelled or result.replanned:
        # Events for one appointment or patient can be handled at once: another handler may have written a newer
        # one, and reconciled, while this one reconciled with what it had written. Its cancellations, or its replans
        # to an older time, would then undo that reconciliation for good; brought in line again with what is stored
        # now (one batch read, made only here). A creation needs none: the sender checks each reminder is still
        # wanted before it goes out.
        with store.read_ahead(appointment_ids=[appointment_id], patient_ids=[patient.patient_id]):
            stored_now = store.get_appointment(appointment_id)
            patient_now = store.get_patient(patient.patient_id)
            if _stamp(stored_now) != _stamp(appointment) or _stamp(patient_now) != _stamp(patient):
                again = reconcile_appointment(
                    appointment_id, settings, now, before=appointment, stored=stored_now, patient=patient_now
                )
                result.merge(again)
    return result


def _stamp(record: AppointmentRecord | PatientRecord | None) -> tuple[object, ...]:
    """What tells one write of an appointment or a patient from another: the event it came from, and a fill-in."""
    if record is None:
        return ()
    return (record.event_at, record.event_id, getattr(record, "filled_at", None))


def _bring_in_line(
    existing: dict[str, MessageRecord],
    patient: PatientRecord,
    appointment: AppointmentRecord,
    state: outcomes.AppointmentState | None,
    settings: Settings,
    now: datetime,
) -> PlanningResult:
    """Make the moves `decide` asks for, each one conditional write."""
    result = PlanningResult()
    reason = why_not_wanted(patient, appointment)
    wanted = _wanted_reminders(patient, appointment, settings) if reason is None else {}
    recipient = store.recipient_key(patient.phone)
    for move, message_id in decide(existing, wanted, recipient, now):
        message = existing.get(message_id)
        if move is Move.CREATE:
            result.created += _create(message_id, wanted[message_id], patient, appointment, settings, now)
        elif move is Move.REVIVE and message is not None:
            # The dose moved back to this date, the family opted in again, the appointment was rebooked: the same
            # reminder comes back while its deadline is open, never a twin.
            reminder = wanted[message_id]
            result.revived += revive_message(
                message, reminder.scheduled_at, reminder.deadline, recipient, settings, now
            )
        elif move is Move.CANCEL and message is not None:
            why = reason or why_not_wanted(patient, appointment, message) or "rescheduled"
            follow_up = outcomes.may_rearm(state, iso(now))
            result.cancelled += cancel_message(message, why, settings, now, follow_up=follow_up)
        elif move is Move.REPLAN and message is not None:
            values = _pending_values(wanted[message_id], recipient)
            result.replanned += store.update_pending(message, values, settings.DUE_INDEX_SHARDS)
    return result


def _wanted_reminders(
    patient: PatientRecord, appointment: AppointmentRecord, settings: Settings
) -> dict[str, WantedReminder]:
    """Every reminder the appointment should have, those whose deadline has passed included (`decide` tells)."""
    zone = ZoneInfo(patient.timezone)
    preferred = int(patient.preferred_hour) if patient.preferred_hour is not None else None
    return {
        store.message_id_for(
            appointment.appointment_id, planned.reminder_type.value, appointment.due_date, patient.patient_id
        ): WantedReminder(planned.reminder_type.value, planned.scheduled_at, planned.deadline)
        for planned in plan_reminders(date.fromisoformat(appointment.due_date), zone, preferred, settings)
    }


def _create(
    message_id: str,
    reminder: WantedReminder,
    patient: PatientRecord,
    appointment: AppointmentRecord,
    settings: Settings,
    now: datetime,
) -> bool:
    message = MessageRecord(
        message_id,
        patient_id=patient.patient_id,
        appointment_id=appointment.appointment_id,
        reminder_type=reminder.reminder_type,
        due_date=appointment.due_date,
        status=Status.PENDING.value,
        scheduled_at=iso(reminder.scheduled_at),
        deadline=iso(reminder.deadline),
        due_shard=store.shard_of(message_id, settings.DUE_INDEX_SHARDS),
        due_at=iso(reminder.scheduled_at),
        created_at=iso(now),
        recipient=store.recipient_key(patient.phone),
    )
    created = store.create_message(message, now)
    if created:
        count(
            MetricName.REMINDERS_PLANNED, reminder_type=reminder.reminder_type, provider=settings.primary_provider.value
        )
    return created


def cancel_message(
    message: MessageRecord, reason: str, settings: Settings, now: datetime, *, follow_up: bool = True
) -> bool:
    """Cancel an outstanding message (a queued one is dropped by the sender when it re-checks). `follow_up`: False
    when the caller knows its appointment's state rules out a follow-up (`outcomes.may_rearm`)."""
    change = Change(
        target=Status.CANCELLED,
        sources=OUTSTANDING,
        set={"last_error": f"cancelled: {reason}"},
        follow_up=follow_up,
    )
    done = store.transition(message, change, at=now, settings=settings)
    if done:
        count(
            MetricName.REMINDERS_CANCELLED,
            reminder_type=message.reminder_type,
            provider=settings.primary_provider.value,
        )
    return done


def revive_message(
    message: MessageRecord,
    scheduled_at: datetime,
    deadline: datetime,
    recipient: str,
    settings: Settings,
    now: datetime,
) -> bool:
    """Bring a cancelled reminder back to pending, on its schedule as planned now; False if it may not come back.

    The store refuses it for a message the provider may have taken (a send or an ambiguous attempt recorded), so a
    reminder that went out is never sent again. One bound to an SMS comes back free when the SMS's idempotency
    record says it did not carry it and never will, bound to it while that SMS may still be requested, and not at all
    when it carried it (`sending.revival_of_bound`). It gets a fresh set of retries and the revival is recorded on it.
    """
    key = message.sms_key
    if key and message.sent_at is None and message.text is None:
        revival = sending.revival_of_bound(message, settings, now)
        if revival is sending.Revival.CARRIED:
            return False
        if revival is sending.Revival.UNBOUND:
            if not store.unbind_cancelled_from_sms(message.message_id, key):
                return False
            message.sms_key, message.sms_bound_at = None, None  # as now stored: the revival checks it is unbound
    change = Change(
        target=Status.PENDING,
        sources=frozenset({Status.CANCELLED}),
        set={
            "scheduled_at": iso(scheduled_at),
            "deadline": iso(deadline),
            "due_at": iso(scheduled_at),
            "due_shard": store.shard_of(message.message_id, settings.DUE_INDEX_SHARDS),
            "retry_floor": int(message.attempts),
            "revived": f"{iso(now)} after {message.last_error}",
            "recipient": recipient,
            "last_error": None,
            "ended_at": None,
        },
        # Not one the provider may have taken: an ambiguous attempt recorded, or bound to another SMS than the one
        # it was read bound to (one the provider took is `sent`, not cancelled).
        guard=Guard.NEVER_SENT,
        reason=f"revived: {(message.last_error or 'cancelled').removeprefix('cancelled: ')} no longer holds",
    )
    return store.transition(message, change, at=now, settings=settings)


def set_consent(phone: str, opt_in: bool, settings: Settings) -> ConsentChange:
    """Opt a number in or out (operator command) and replan its patients; what that did.

    An opt-out stops the number itself: later clinic updates carrying `sms_opt_in: true` and siblings registered
    on it later get no reminders, until an explicit opt-in (this command, a reply, or `sms_opt_in_renewed`).
    """
    from core.phone import normalize_phone

    store.bind(settings)
    number = normalize_phone(phone, settings.SMS_DEFAULT_REGION)
    return change_consent(number, opt_in, settings, clock.now(), by="operator")


# The event ids `change_consent` stamps a patient with when it opts it out with its number (`by`: who asked).
STOP_OPT_OUTS = frozenset({"reply-optout", "operator-optout"})


def consent_changes(patient: PatientRecord, opt_in: bool) -> bool:
    """Whether opting the patient's number in (or out) changes the patient's own consent. An opt-in lifts only an
    opt-out the number's stop made (a reply, an operator: `STOP_OPT_OUTS`), never one its clinic record says: a
    family's OUI, `rappel optin` and a renewal at the clinic all give a sibling its clinic refused nothing."""
    if opt_in:
        return not patient.sms_opt_in and patient.event_id in STOP_OPT_OUTS
    return bool(patient.sms_opt_in)


@dataclass
class ConsentChange:
    """What opting a number in or out did: whether its stop was written (opt-out) or lifted (opt-in) by this
    change, when that stop was written, whether a patient's own consent flipped, and its patients' reminders."""

    number: str
    stop_changed: bool
    stopped_at: str | None
    patients: list[PatientRecord]
    consent_flipped: bool
    result: PlanningResult


def change_consent(
    number: str,
    opt_in: bool,
    settings: Settings,
    now: datetime,
    *,
    by: str,
    patients: list[PatientRecord] | None = None,
    asked_at: datetime | None = None,
) -> ConsentChange:
    """Opt an E.164 number in or out, for every patient with it: the one path of the operator's `rappel optout` /
    `optin` and of a family's reply (`by`: "operator" or "reply"). Pending reminders are cancelled on an opt-out and
    revived on an opt-in while still before their deadline. `patients`: those with the number, when already read.
    `asked_at`: when the change was asked for (a reply's, made again later), which the stop and the patients are
    stamped with; now by default.
    """
    stamp = iso(asked_at or now)
    # The stop first: a crash after it leaves the number stopped, which the next reconciliation and the sender
    # both honour; the patient writes below only make the records say so too.
    if opt_in:
        stop = store.number_stop(number)  # the stop this opt-in lifts
        stopped_at = stop.at if stop is not None else None
        changed = stop is not None and store.clear_number_stop(number, stop)
    else:
        changed = store.stop_number(number, stamp, f"{by} opt-out")
        stopped_at = stamp if changed else store.stopped_since(number)  # the stop in force
    patients = store.patients_with_phone(number) if patients is None else patients
    result = PlanningResult()
    flipped = False
    for patient in patients:
        flips = consent_changes(patient, opt_in)
        flipped |= flips
        # An opt-out leaves a patient already opted out as its own record has it, and an opt-in a patient its clinic
        # opted out (`consent_changes`). An opt-in that lifted the number's stop stamps the others it leaves opted in
        # (an older clinic opt-out arriving later must not undo it); one that changed nothing writes nothing: a
        # family's "Oui" to a reminder is often only that, and its stamp would make every clinic update stamped
        # before it but delivered after it (a new phone, an opt-out, a register import) look older than the record.
        if flips or (opt_in and changed and patient.sms_opt_in):
            # An opt-in writes only over the record it read: a clinic's opt-out landing meanwhile stands.
            store.set_opt_in(
                patient.patient_id,
                opt_in,
                stamp,
                f"{by}-optin" if opt_in else f"{by}-optout",
                only_after=patient.event_id if opt_in else None,
            )
        result.merge(reconcile_patient(patient.patient_id, settings, now))
    return ConsentChange(number, changed, stopped_at, patients, flipped, result)
