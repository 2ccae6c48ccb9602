"""Whether a reminder is still wanted: the one rule planning and sending both apply.

Planning asks it when an event changes a patient or an appointment; the sender asks it again just before the
provider call, because the record may have changed after the message was queued.
"""

from __future__ import annotations

from core import store
from core.store import AppointmentRecord, MessageRecord, PatientRecord


def why_not_wanted(
    patient: PatientRecord | None,
    appointment: AppointmentRecord | None,
    message: MessageRecord | None = None,
) -> str | None:
    """None while a reminder for this appointment (and `message`, when given) should still go out, else why not.

    Reads whether the patient's number is stopped: a stop is a fact about the number, not the patient record.
    """
    if patient is None:
        return "patient unknown"
    if appointment is None:
        return "appointment unknown"
    if appointment.status != "scheduled":
        return f"appointment {appointment.status}"
    if not patient.sms_opt_in:
        return "opted out"
    if store.number_stopped(patient.phone):
        return "opted out (the number is stopped)"
    if message is not None:
        if message.patient_id != appointment.patient_id:
            return "appointment moved to another patient"
        if message.due_date != appointment.due_date:
            return "rescheduled"
    return None
