"""Whether a reminder is still wanted: the one rule planning and sending both apply.

Planning asks it when an event changes a patient or an appointment; the sender asks it again just before the
provider call, because the record may have changed after the message was queued.
"""

from __future__ import annotations

from core import store
from core.store import AppointmentRecord, MessageRecord, PatientRecord

# A message of this kind confirms a reply's change (core.replies): it goes to the number that replied, opted out or
# not, and names no child. Its `appointment_id` says which change it confirms (never an appointment's id: those
# start with a letter or a digit).
CONFIRMATION = "confirmation"
OPTED_OUT = "#opted_out"
OPTED_IN = "#opted_in"


def is_confirmation(message: MessageRecord) -> bool:
    """Whether the message confirms a reply's change rather than reminding of a dose."""
    return message.reminder_type == CONFIRMATION


def appointment_of(message: MessageRecord) -> AppointmentRecord | None:
    """The appointment a message is about, as stored; for a confirmation, which has none, a stand-in (never
    stored) that carries its date and patient, so that the send path needs no second shape."""
    if not is_confirmation(message):
        return store.get_appointment(message.appointment_id)
    return AppointmentRecord(
        message.appointment_id,
        patient_id=message.patient_id,
        vaccine="",
        dose=0,
        due_date=message.due_date,
        clinic=None,
        status="scheduled",
        event_at="",
        event_id="",
    )


def why_not_wanted(
    patient: PatientRecord | None,
    appointment: AppointmentRecord | None,
    message: MessageRecord | None = None,
    *,
    fresh: bool = False,
) -> str | None:
    """None while a reminder for this appointment (and `message`, when given) should still go out, else why not.

    Reads whether the patient's number is stopped: a stop is a fact about the number, not the patient record
    (`fresh`: from the table, not from what the handler read ahead). A confirmation follows its own rule
    (`_why_not_confirmation`).
    """
    if message is not None and is_confirmation(message):
        return _why_not_confirmation(patient, message, fresh=fresh)
    if patient is None:
        return "patient unknown"
    if appointment is None:
        return "appointment unknown"
    if appointment.status != "scheduled":
        return f"appointment {appointment.status}"
    if not patient.sms_opt_in:
        return "opted out"
    if store.number_stopped(patient.phone, fresh=fresh):
        return "opted out (the number is stopped)"
    if message is not None:
        if message.patient_id != appointment.patient_id:
            return "appointment moved to another patient"
        if message.due_date != appointment.due_date:
            return "rescheduled"
    return None


def _why_not_confirmation(patient: PatientRecord | None, message: MessageRecord, *, fresh: bool) -> str | None:
    """A confirmation goes out while what it says is still true, to the number that replied: an opt-out one to a
    number still stopped (the one message a stopped number gets), an opt-in one to a number not stopped again."""
    if patient is None:
        return "patient unknown"
    if message.recipient != store.recipient_key(patient.phone):
        return "the patient's number changed since the reply"
    stopped = store.number_stopped(patient.phone, fresh=fresh)
    if message.appointment_id == OPTED_OUT and not stopped:
        return "no longer true: the number opted in again"
    if message.appointment_id == OPTED_IN and stopped:
        return "no longer true: the number opted out again"
    return None
