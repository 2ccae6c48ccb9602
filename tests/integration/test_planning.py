"""Planning on moto: create, replay, reschedule, cancel, opt out, replan, and every class of bad input."""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import store
from core.lifecycle import IllegalTransition, Status
from core.planning import handle_clinic_event
from core.store import Change, MessageRecord
from tests.helpers import dose, envelope, patient

pytestmark = pytest.mark.integration


def _messages(patient_id: str = "p1") -> dict[str, MessageRecord]:
    return {m.reminder_type: m for m in store.messages_of_patient(patient_id)}


def test_patient_then_dose_creates_three_timed_reminders(aws) -> None:
    assert handle_clinic_event(patient(), aws.settings).applied == 1
    result = handle_clinic_event(dose(), aws.settings)
    assert result.created == 3
    messages = _messages()
    assert {t: (m.status, m.scheduled_at) for t, m in messages.items()} == {
        "7_day_reminder": ("pending", "2027-03-13T09:00:00.000Z"),
        "1_day_reminder": ("pending", "2027-03-19T09:00:00.000Z"),
        "overdue_reminder": ("pending", "2027-03-21T14:00:00.000Z"),
    }
    for message in messages.values():
        assert message.due_shard and message.due_shard.startswith("DUE#")
        assert message.due_at == message.scheduled_at
        assert message.message_id == store.message_id_for("a1", message.reminder_type, "2027-03-20", "p1")


def test_dose_before_patient_is_planned_when_the_patient_arrives(aws) -> None:
    assert handle_clinic_event(dose(), aws.settings).created == 0
    assert handle_clinic_event(patient(), aws.settings).created == 3


def test_a_dose_and_its_new_patient_handled_at_once_are_planned(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A register import sends a new child's PatientUpserted and DoseScheduled together, and Lambda runs both at once.
    The dose's handler reads no patient yet; the patient's handler lists the patient's appointments from an
    eventually consistent index that may not show the dose's appointment yet: neither planned anything, for good.
    The dose's handler now looks for the patient again for a few seconds (longer than the index lags behind)."""
    arrived: list[object] = []

    def patient_lands_meanwhile(seconds: float) -> None:
        if not arrived:  # the patient's handler: its write lands, its index query (not shown) missed the appointment
            # Written by another Lambda (a context of its own): this handler's read-ahead, which found no patient,
            # is not told, so the look again must read the table itself.
            write = contextvars.Context().run(store.save_patient, store.PatientRecord(**_patient_fields()))
            arrived.append(write is not None)
        aws.clock.advance_to(aws.clock.now() + timedelta(seconds=seconds))

    monkeypatch.setattr(aws.clock, "sleep", patient_lands_meanwhile)

    assert handle_clinic_event(dose(), aws.settings).created == 3
    assert arrived == [True] and {m.status for m in _messages().values()} == {"pending"}


def _patient_fields() -> dict[str, object]:
    return {
        "patient_id": "p1",
        "phone": "+2250701020304",
        "timezone": "Africa/Abidjan",
        "language": "fr",
        "sms_opt_in": True,
        "display_name": "Awa",
        "event_at": "2027-03-01T00:00:00.000Z",
        "event_id": "evt-concurrent",
    }


def test_replaying_any_event_is_a_no_op(aws) -> None:
    first_patient, first_dose = patient(), dose()
    handle_clinic_event(first_patient, aws.settings)
    handle_clinic_event(first_dose, aws.settings)
    before = {t: (m.version, m.status) for t, m in _messages().items()}
    for event in (first_dose, first_patient, first_dose):
        result = handle_clinic_event(event, aws.settings)
        assert (result.created, result.cancelled, result.replanned) == (0, 0, 0)
    assert {t: (m.version, m.status) for t, m in _messages().items()} == before


@pytest.mark.parametrize("order", ["CON", "CNO", "OCN", "NCO", "ONC", "NOC"])
def test_schedules_arriving_after_their_doses_close_end_the_same_in_any_order(aws, order: str) -> None:
    """A dose given (C) and two schedules of it, older (O) and newer (N), both stamped before the close, in every
    order: the later-stamped schedule says what the appointment is (its date decides the month it counts in, and
    "given by the due date"), and the close stands. The first schedule to arrive after the close used to fill the
    appointment in for good."""
    start = aws.clock.now() - timedelta(hours=4)
    handle_clinic_event(patient(), aws.settings)
    events = {
        "C": envelope(
            "DoseAdministered", start + timedelta(hours=3), None, appointment_id="a1", administered_on="2027-03-01"
        ),
        "O": dose(due_date="2027-03-20", at=start + timedelta(hours=1)),
        "N": dose(due_date="2027-03-27", at=start + timedelta(hours=2)),
    }
    for name in order:
        handle_clinic_event(events[name], aws.settings)

    stored = store.get_appointment("a1")
    assert stored is not None and (stored.status, stored.due_date) == ("administered", "2027-03-27")
    assert {m.status for m in store.messages_of_patient("p1")} <= {"cancelled"}  # nothing left to send


def test_reschedule_cancels_old_reminders_and_plans_new_ones(aws) -> None:
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(due_date="2027-03-20"), aws.settings)
    result = handle_clinic_event(dose(due_date="2027-03-27"), aws.settings)
    assert (result.created, result.cancelled) == (3, 3)
    by_date = {(m.due_date, m.reminder_type): m.status for m in store.messages_of_patient("p1")}
    assert {k: v for k, v in by_date.items() if k[0] == "2027-03-20"} == {
        ("2027-03-20", t): "cancelled" for t in ("7_day_reminder", "1_day_reminder", "overdue_reminder")
    }
    assert all(v == "pending" for k, v in by_date.items() if k[0] == "2027-03-27")


def test_an_older_event_arriving_late_changes_nothing(aws) -> None:
    handle_clinic_event(patient(), aws.settings)
    newer = dose(due_date="2027-03-27", at=aws.clock.now() + timedelta(minutes=5))
    older = dose(due_date="2027-03-20", at=aws.clock.now())
    handle_clinic_event(newer, aws.settings)
    result = handle_clinic_event(older, aws.settings)
    assert result.ignored == 1 and result.created == 0
    assert {m.due_date for m in store.messages_of_patient("p1") if m.status == "pending"} == {"2027-03-27"}


def test_dose_administered_cancels_what_is_left(aws) -> None:
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    result = handle_clinic_event(
        envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-01"), aws.settings
    )
    assert result.cancelled == 3
    assert {m.status for m in _messages().values()} == {"cancelled"}
    assert all(m.due_at is None and m.due_shard is None for m in _messages().values())  # out of the due index
    assert all(m.expires_at is not None for m in _messages().values())  # retention TTL set


def test_appointment_cancelled_cancels_what_is_left(aws) -> None:
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    result = handle_clinic_event(
        envelope("AppointmentCancelled", appointment_id="a1", reason="moved away"), aws.settings
    )
    assert result.cancelled == 3


def test_opting_out_cancels_pending_and_opting_in_plans_nothing_twice(aws) -> None:
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    assert handle_clinic_event(patient(sms_opt_in=False), aws.settings).cancelled == 3
    assert handle_clinic_event(patient(sms_opt_in=True), aws.settings).created == 0


def test_a_renewed_consent_lifts_the_numbers_stop_for_every_patient_with_the_number(aws) -> None:
    """A sibling registered on a stopped number gets nothing planned; the clinic's `sms_opt_in_renewed` for the
    other child lifts the number's stop, and so must plan the sibling's reminders too, as `rappel optin` does."""
    later = aws.clock.now() + timedelta(minutes=1)
    handle_clinic_event(patient("p1"), aws.settings)
    store.stop_number("+2250701020304", store.iso(aws.clock.now()), "reply opt-out")
    handle_clinic_event(patient("p2", display_name="Kofi"), aws.settings)
    handle_clinic_event(dose("a2", "p2"), aws.settings)
    assert _messages("p2") == {}

    handle_clinic_event(patient("p1", sms_opt_in_renewed=True, at=later), aws.settings)

    assert not store.number_stopped("+2250701020304")
    assert {m.status for m in _messages("p2").values()} == {"pending"} and len(_messages("p2")) == 3


def test_zone_change_replans_pending_messages(aws) -> None:
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    result = handle_clinic_event(patient(timezone="Europe/Paris"), aws.settings)
    assert result.replanned == 3
    assert _messages()["7_day_reminder"].scheduled_at == "2027-03-13T08:00:00.000Z"  # 09:00 CET
    assert _messages()["7_day_reminder"].due_at == "2027-03-13T08:00:00.000Z"


def test_preferred_hour_change_replans(aws) -> None:
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    handle_clinic_event(patient(preferred_hour=17), aws.settings)
    assert _messages()["1_day_reminder"].scheduled_at == "2027-03-19T17:00:00.000Z"


def test_late_planning_skips_reminders_past_their_deadline(aws) -> None:
    aws.clock.advance_to(datetime(2027, 3, 16, 12, 0, tzinfo=UTC))  # 7-day deadline (Mar 15 09:00) passed
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    assert set(_messages()) == {"1_day_reminder", "overdue_reminder"}


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (patient(phone="12"), "detail.phone"),
        (patient(phone="+22501"), "detail.phone"),
        (patient(timezone="Mars/Olympus"), "detail.timezone"),
        (patient(language="xx"), "detail.language"),
        (patient(sms_opt_in="yes"), "detail.sms_opt_in"),
        (patient(display_name="A" * 41), "detail.display_name"),
        (patient(preferred_hour=24), "detail.preferred_hour"),
        (patient(patient_id=""), "detail.patient_id"),
        (patient(extra_field=1), "detail.extra_field"),
        (dose(due_date="2027-02-30"), "detail.due_date"),
        (dose(due_date="20-03-2027"), "detail.due_date"),
        (dose(due_date="2027-W12-6"), "detail.due_date"),  # an ISO week date: 10 characters, not YYYY-MM-DD
        (dose(due_date="20270320T0"), "detail.due_date"),
        (dose(due_date=1805500800), "detail.due_date"),  # not taken for a Unix time
        (dose(due_date="2099-01-01"), "detail.due_date"),
        (dose(dose="2"), "detail.dose"),
        (dose(vaccine="V" * 200), "detail.vaccine"),
        (dose(clinic="C" * 61), "detail.clinic"),
        ({**dose(), "detail-type": "DoseForgotten"}, "detail-type"),
        ({**dose(), "source": "someone.else"}, "source"),
        ({**dose(), "detail": "nope"}, "detail"),
        ({**dose(), "time": "yesterday"}, "time"),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(aws, event, field, real_logs) -> None:
    result = handle_clinic_event(event, aws.settings)
    assert result.rejected == 1
    assert result.errors[0].startswith(field), result.errors
    assert store.get_patient("p1") is None and store.get_appointment("a1") is None
    assert "clinic event rejected" in real_logs.getvalue()
    assert "0701020304" not in real_logs.getvalue()  # the phone never reaches the logs


@pytest.mark.parametrize("field", ["timezone", "language"])
@pytest.mark.parametrize("number", ["+225 07 01 02 03 04", "07 01 02 03 04", "0701020304", "%2B2250701020304"])
def test_a_phone_in_the_wrong_field_is_refused_and_never_logged_whatever_its_spacing(
    aws, field: str, number: str, real_logs
) -> None:
    """A shifted register row puts the phone in another field; the refusal quoted it, and the masking formatter
    caught only an unbroken run of digits: "+225 07 01 02 03 04" reached the logs as it was."""
    result = handle_clinic_event(patient(**{field: number}), aws.settings)
    assert result.rejected == 1 and result.errors[0].startswith(f"detail.{field}"), result.errors
    logged = real_logs.getvalue()
    assert "clinic event rejected" in logged
    assert "02 03" not in logged and "0102" not in logged, logged


def test_a_bad_event_does_not_stop_the_next_one(aws) -> None:
    handle_clinic_event(patient(phone="nonsense"), aws.settings)
    assert handle_clinic_event(patient(), aws.settings).applied == 1


def test_the_store_refuses_an_illegal_transition_before_and_at_dynamodb(aws) -> None:
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    message = _messages()["7_day_reminder"]
    with pytest.raises(IllegalTransition):
        store.transition(
            message,
            Change(Status.DELIVERED, frozenset({Status.PENDING}), {}),
            at=aws.clock.now(),
            settings=aws.settings,
        )
    # A legal move whose source no longer holds is refused by DynamoDB's condition.
    assert store.transition(
        message, Change(Status.CANCELLED, frozenset({Status.PENDING}), {}), at=aws.clock.now(), settings=aws.settings
    )
    assert not store.transition(
        message, Change(Status.EXPIRED, frozenset({Status.PENDING}), {}), at=aws.clock.now(), settings=aws.settings
    )
    assert store.get_message(message.message_id).status == "cancelled"


# One register row (`rappel import`): a patient and one appointment.
REGISTER_ROW = {
    "patient_id": "p1",
    "phone": "+2250701020304",
    "timezone": "Africa/Abidjan",
    "language": "fr",
    "sms_opt_in": "true",
    "display_name": "Awa",
    "appointment_id": "a1",
    "vaccine": "Penta",
    "dose": "1",
    "due_date": "2027-03-20",
    "clinic": "CSU Abobo",
}


def test_a_register_discreet_column_sets_the_flag_and_a_bad_value_names_the_field(aws) -> None:
    from rappel_cli.importer import import_rows

    row = dict(REGISTER_ROW)
    good = import_rows([{**row, "discreet": "yes"}], aws.settings)
    bad = import_rows([{**row, "patient_id": "p2", "appointment_id": "a2", "discreet": "maybe"}], aws.settings)

    assert good.errors == [] and store.get_patient("p1").discreet is True
    assert len(bad.errors) == 1 and "detail.discreet" in bad.errors[0][1] and store.get_patient("p2") is None


def test_a_register_preferred_hour_column_sets_the_hour_and_a_bad_one_names_the_field(aws) -> None:
    """The design's patients have an optional preferred hour; a register column for it was silently ignored."""
    from rappel_cli.importer import import_rows

    good = import_rows([{**REGISTER_ROW, "preferred_hour": "18"}], aws.settings)
    bad = import_rows(
        [{**REGISTER_ROW, "patient_id": "p2", "appointment_id": "a2", "preferred_hour": "6pm"}], aws.settings
    )

    assert good.errors == [] and store.get_patient("p1").preferred_hour == 18
    assert len(bad.errors) == 1 and "detail.preferred_hour" in bad.errors[0][1] and store.get_patient("p2") is None


@pytest.mark.parametrize("without", ["no column", "an empty cell"])
def test_a_register_without_the_optional_columns_keeps_what_the_clinic_system_set(aws, without: str) -> None:
    """The clinic system flagged a family discreet and asked for 18:00; the next register export, without those
    columns (or with them empty), turned discreet texts off (the child's name back on a shared phone) and moved every
    reminder back to 09:00."""
    from rappel_cli.importer import import_rows

    handle_clinic_event(patient("p1", discreet=True, preferred_hour=18), aws.settings)
    aws.clock.advance_to(aws.clock.now() + timedelta(hours=1))
    row = dict(REGISTER_ROW) if without == "no column" else {**REGISTER_ROW, "discreet": "", "preferred_hour": ""}

    assert import_rows([row], aws.settings, as_of=aws.clock.now()).errors == []

    stored = store.get_patient("p1")
    assert stored is not None and (stored.discreet, stored.preferred_hour) == (True, 18)
    seven_day = _messages()["7_day_reminder"]
    assert store.parse_iso(seven_day.scheduled_at).hour == 18  # Abidjan is UTC+0


def test_optional_patient_fields_given_as_null_are_applied_not_refused_and_null_never_lifts_discretion(aws) -> None:
    """A clinic system that writes null for a value it has none for: the update (a new phone, an opt-out) applies
    (`discreet: null` refused the whole event). A null zone or hour is the default; a null `discreet` keeps the stored
    flag, since only a clinic's `false` may put the child's name back on a phone others read."""
    handle_clinic_event(patient("p1", discreet=True, preferred_hour=18), aws.settings)
    aws.clock.advance_to(aws.clock.now() + timedelta(hours=1))
    result = handle_clinic_event(
        patient("p1", phone="+2250701020399", discreet=None, preferred_hour=None, timezone=None), aws.settings
    )
    assert (result.applied, result.rejected) == (1, 0), result.errors
    stored = store.get_patient("p1")
    assert stored is not None
    assert (stored.phone, bool(stored.discreet), stored.preferred_hour, stored.timezone) == (
        "+2250701020399",
        True,
        None,
        aws.settings.APP_TIMEZONE,
    )


@pytest.mark.parametrize("zone", ["Africa", "Nowhere/City", "../etc"])
def test_a_zone_that_is_not_one_is_refused_naming_the_field_not_a_crash(aws, zone: str) -> None:
    """A folder of the zone database ("Africa", a plausible register value) used to escape as an OSError: a crash
    that Lambda retried into the planning DLQ, and an import that stopped at that row."""
    result = handle_clinic_event(patient(timezone=zone), aws.settings)
    assert result.rejected == 1 and result.errors[0].startswith("detail.timezone")


def test_a_routine_update_after_a_deadline_leaves_an_ambiguous_dead_letter_to_its_operator(aws) -> None:
    """A name corrected once the 7-day reminder's deadline has passed: the reminder is still this dose's, so it is
    not cancelled as "rescheduled" (it used to be, and an ambiguous dead letter, whose SMS may have gone out, then
    left `rappel messages --status dead_letter` recorded as never sent)."""
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    seven = _messages()["7_day_reminder"]
    at = store.parse_iso(seven.scheduled_at)
    aws.clock.advance_to(at)
    assert store.transition(seven, Change(Status.QUEUED, frozenset({Status.PENDING}), {}), at=at, settings=aws.settings)
    queued = store.get_message(seven.message_id)
    assert queued is not None
    dead = Change(Status.DEAD_LETTER, frozenset({Status.QUEUED}), {"ambiguous": True, "last_error": "ambiguous"})
    assert store.transition(queued, dead, at=at, settings=aws.settings)
    aws.clock.advance_to(store.parse_iso(seven.deadline) + timedelta(hours=1))

    assert handle_clinic_event(patient(display_name="Awa K."), aws.settings).cancelled == 0

    assert _messages()["7_day_reminder"].status == "dead_letter"


def _older_with_a_newer_one_meanwhile(
    aws: Any,
    monkeypatch: pytest.MonkeyPatch,
    older: Callable[[datetime], dict[str, Any]],
    newer: Callable[[datetime], dict[str, Any]],
) -> None:
    """p1 with a1 planned; then the event `older` (stamped t1) is handled, and the event `newer` (t2, a second later)
    is handled to the end by another Lambda while `older` is about to reconcile with what it had written."""
    from core import planning

    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    t1 = aws.clock.now() + timedelta(seconds=10)
    t2 = t1 + timedelta(seconds=1)
    aws.clock.advance_to(t2 + timedelta(seconds=1))
    original = planning.reconcile_appointment
    calls = itertools.count()

    def newer_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if next(calls) == 0:  # t1's reconciliation; the newer event's own runs through here too
            contextvars.Context().run(handle_clinic_event, newer(t2), aws.settings)
        return original(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(planning, "reconcile_appointment", newer_meanwhile)
        handle_clinic_event(older(t1), aws.settings)


def test_a_newer_event_handled_while_an_older_one_reconciles_is_not_undone_by_it(
    aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DoseAdministered (t1) writes its close; the clinic's correction, DoseScheduled (t2, not given after all),
    is handled to the end by another Lambda; then t1 reconciles with the close it had written and cancels the
    three reminders. The appointment is scheduled again, so they must be pending: t1 now looks again at what is
    stored after cancelling, and brings them back in line."""
    _older_with_a_newer_one_meanwhile(
        aws,
        monkeypatch,
        lambda t1: envelope("DoseAdministered", at=t1, appointment_id="a1", administered_on="2027-03-01"),
        lambda t2: dose(at=t2),  # the clinic's correction
    )

    appointment = store.get_appointment("a1")
    assert appointment is not None and appointment.status == "scheduled"
    assert {m.status for m in _messages().values()} == {"pending"}


def test_importing_the_same_register_again_never_undoes_a_later_clinic_event(aws) -> None:
    """Every row is stamped with the register's export time (`as_of`), as a clinic system stamps its events: the dose
    given since is newer and stands. Stamped with the import's own time, the second import put the appointment back
    to scheduled and revived its three reminders, for a dose already given."""
    from rappel_cli.importer import import_rows

    row = dict(REGISTER_ROW)
    exported = aws.clock.now() - timedelta(days=1)
    assert import_rows([row], aws.settings, as_of=exported).created == 3
    aws.clock.advance_to(aws.clock.now() + timedelta(hours=1))
    given = envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-01")
    assert handle_clinic_event(given, aws.settings).cancelled == 3
    aws.clock.advance_to(aws.clock.now() + timedelta(hours=1))

    again = import_rows([row], aws.settings, as_of=exported)

    assert again.errors == [] and again.created == 0
    appointment = store.get_appointment("a1")
    assert appointment is not None and appointment.status == "administered"
    assert {m.status for m in _messages().values()} == {"cancelled"}


def test_a_renewal_at_the_clinic_gives_back_the_siblings_the_familys_stop_opted_out(aws) -> None:
    """The family's STOP opted both children out with their number; the clinic then records the renewed consent on
    one of them: the stop was the number's, so both get their reminders back, as `rappel optin` would give them. A
    sibling opted out by its own clinic record is not opted in by it."""
    from core.planning import set_consent

    handle_clinic_event(patient("p1"), aws.settings)
    handle_clinic_event(patient("p2", display_name="Ali"), aws.settings)
    handle_clinic_event(patient("p3", display_name="Moussa", sms_opt_in=False), aws.settings)
    for n in (1, 2, 3):
        handle_clinic_event(dose(f"a{n}", f"p{n}"), aws.settings)
    aws.clock.advance_to(aws.clock.now() + timedelta(minutes=5))
    assert len(set_consent("+2250701020304", False, aws.settings).patients) == 3  # as a STOP reply does
    aws.clock.advance_to(aws.clock.now() + timedelta(minutes=5))

    handle_clinic_event(patient("p1", sms_opt_in_renewed=True), aws.settings)

    assert {m.status for m in store.messages_of_patient("p2")} == {"pending"}
    assert store.get_patient("p2").sms_opt_in  # type: ignore[union-attr]
    assert not store.get_patient("p3").sms_opt_in  # type: ignore[union-attr]
    assert store.messages_of_patient("p3") == []


def test_a_renewal_recorded_before_the_familys_stop_and_delivered_after_it_lifts_nothing(aws) -> None:
    """The clinic records the renewal (t1), the family then replies STOP (t2), the renewal's event arrives last:
    the STOP is the family's latest word, so the number stays stopped and no sibling is opted back in."""
    from core.planning import set_consent

    t0 = aws.clock.now()
    handle_clinic_event(patient("p1", sms_opt_in=False, at=t0), aws.settings)  # its own record: no SMS
    handle_clinic_event(patient("p2", display_name="Ali", at=t0), aws.settings)
    handle_clinic_event(dose("a1", "p1"), aws.settings)
    handle_clinic_event(dose("a2", "p2"), aws.settings)
    renewal = patient("p1", sms_opt_in_renewed=True, at=t0 + timedelta(minutes=5))
    aws.clock.advance_to(t0 + timedelta(minutes=10))
    set_consent("+2250701020304", False, aws.settings)
    aws.clock.advance_to(t0 + timedelta(minutes=15))

    handle_clinic_event(renewal, aws.settings)

    assert store.stopped_since("+2250701020304") is not None
    assert not store.get_patient("p2").sms_opt_in  # type: ignore[union-attr]
    assert {m.status for m in store.messages_of_patient("p2")} == {"cancelled"}


def test_a_newer_event_handled_while_an_older_one_replans_is_not_undone_by_it(
    aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PatientUpserted (t1, preferred hour 08:00) is written; the family's newer update (t2, 11:00) is handled to the
    end by another Lambda; then t1 replans the reminders with the record it had written: they went out at 08:00,
    the hour the family no longer wanted. t1 looks again at what is stored after replanning too."""
    _older_with_a_newer_one_meanwhile(
        aws,
        monkeypatch,
        lambda t1: patient(at=t1, preferred_hour=8),
        lambda t2: patient(at=t2, preferred_hour=11),
    )

    stored = store.get_patient("p1")
    assert stored is not None and stored.preferred_hour == 11
    hours = {
        store.parse_iso(m.scheduled_at).hour for m in _messages().values() if m.reminder_type != "overdue_reminder"
    }
    assert hours == {11}


def _dose_with_its_patients_update_landing_first(aws, monkeypatch: pytest.MonkeyPatch, update: dict[str, Any]) -> None:
    """A new dose and its patient's update handled at once (a register import sends both): the update is handled
    to the end, by another Lambda, just before the dose's appointment is written, so its listing of the patient's
    appointments cannot see this one."""
    original = store.save_appointment
    calls = itertools.count()

    def update_lands_first(*args: Any, **kwargs: Any) -> bool:
        if next(calls) == 0:
            contextvars.Context().run(handle_clinic_event, update, aws.settings)
        return original(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(store, "save_appointment", update_lands_first)
        handle_clinic_event(dose(at=aws.clock.now()), aws.settings)


def test_an_opt_in_handled_while_a_new_dose_is_gets_the_dose_its_reminders(aws, monkeypatch) -> None:
    handle_clinic_event(patient(sms_opt_in=False, at=aws.clock.now() - timedelta(days=1)), aws.settings)

    _dose_with_its_patients_update_landing_first(aws, monkeypatch, patient(sms_opt_in=True, at=aws.clock.now()))

    assert {t: m.status for t, m in _messages().items()} == {
        "7_day_reminder": "pending",
        "1_day_reminder": "pending",
        "overdue_reminder": "pending",
    }


def test_a_zone_change_handled_while_a_new_dose_is_plans_the_dose_in_the_new_zone(aws, monkeypatch) -> None:
    handle_clinic_event(patient(at=aws.clock.now() - timedelta(days=1)), aws.settings)  # Africa/Abidjan, UTC+0

    update = patient(timezone="Asia/Kolkata", at=aws.clock.now())
    _dose_with_its_patients_update_landing_first(aws, monkeypatch, update)

    assert _messages()["7_day_reminder"].scheduled_at == "2027-03-13T03:30:00.000Z"  # 09:00 in Kolkata


def test_replan_brings_every_waiting_reminder_to_the_rules_as_they_are_now(aws) -> None:
    """A stored send time is computed once, at planning: a new REMINDER_*_TIME (or zone rules from a new tzdata)
    reached no reminder already planned until an event for its appointment came, and a reminder planned at 19:00
    that the new rules put in quiet hours was deferred past its deadline. `replan_waiting` reconciles every
    appointment with a reminder waiting; reminders already sent or cancelled are left as they are."""
    from core.planning import replan_waiting

    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    handle_clinic_event(patient("p2", phone="+2250701020399"), aws.settings)
    handle_clinic_event(dose("a2", "p2"), aws.settings)
    handle_clinic_event(patient("p2", phone="+2250701020399", sms_opt_in=False), aws.settings)  # p2's cancelled
    later = aws.settings.model_copy(update={"REMINDER_7_DAY_TIME": "10:30", "REMINDER_1_DAY_TIME": "11:00"})

    result = replan_waiting(later, aws.clock.now())

    assert (result.replanned, result.created, result.cancelled, result.revived) == (2, 0, 0, 0)
    assert {t: m.scheduled_at for t, m in _messages().items()} == {
        "7_day_reminder": "2027-03-13T10:30:00.000Z",
        "1_day_reminder": "2027-03-19T11:00:00.000Z",
        "overdue_reminder": "2027-03-21T14:00:00.000Z",
    }
    assert _messages()["7_day_reminder"].due_at == "2027-03-13T10:30:00.000Z"
    assert {m.status for m in _messages("p2").values()} == {"cancelled"}
    assert replan_waiting(later, aws.clock.now()).replanned == 0


def test_a_redelivery_of_the_first_of_two_same_second_schedules_does_not_undo_the_second(aws) -> None:
    """EventBridge's `time` has one-second precision and it delivers at least once: a clinic that moves a dose twice
    in one second sends two schedules of equal stamp and rank. The later delivery wins; a redelivery of the first,
    after the second, is a replay of an event already applied, not a newer one."""
    handle_clinic_event(patient(), aws.settings)
    same_second = aws.clock.now().replace(microsecond=0)
    first = dose(due_date="2027-03-20", at=same_second, event_id="evt-first")
    second = dose(due_date="2027-03-27", at=same_second, event_id="evt-second")
    assert handle_clinic_event(first, aws.settings).applied == 1
    assert handle_clinic_event(second, aws.settings).applied == 1

    again = handle_clinic_event(first, aws.settings)

    assert (again.applied, again.ignored, again.created, again.cancelled) == (0, 1, 0, 0)
    assert store.get_appointment("a1").due_date == "2027-03-27"  # type: ignore[union-attr]
    pending = [m for m in store.messages_of_patient("p1") if m.status == Status.PENDING.value]
    assert {m.due_date for m in pending} == {"2027-03-27"} and len(pending) == 3
    # The last one applied, delivered again (a crash after its write), is still applied: its reconciliation resumes.
    assert handle_clinic_event(second, aws.settings).applied == 1
    # A third event of that second, new, is the latest delivery and wins.
    third = dose(due_date="2027-04-03", at=same_second, event_id="evt-third")
    assert handle_clinic_event(third, aws.settings).applied == 1
    assert store.get_appointment("a1").due_date == "2027-04-03"  # type: ignore[union-attr]


def test_a_redelivery_of_the_first_of_two_same_second_patient_updates_does_not_undo_the_second(aws) -> None:
    """The same for a patient: the phone the second update gave stays, not the one the redelivered first gave."""
    same_second = aws.clock.now().replace(microsecond=0)
    first = patient(phone="+2250701020304", at=same_second, event_id="evt-first")
    second = patient(phone="+2250705060708", at=same_second, event_id="evt-second")
    assert handle_clinic_event(first, aws.settings).applied == 1
    assert handle_clinic_event(second, aws.settings).applied == 1

    assert handle_clinic_event(first, aws.settings).ignored == 1

    assert store.get_patient("p1").phone == "+2250705060708"  # type: ignore[union-attr]
    assert handle_clinic_event(second, aws.settings).applied == 1


def test_a_required_field_left_empty_is_refused_by_name_and_nothing_is_written(aws) -> None:
    """A put refused it; the update that replaced it must too (it would have removed the stored value)."""
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(), aws.settings)
    broken = store.copy_appointment(store.get_appointment("a1"))  # type: ignore[arg-type]
    broken.vaccine, broken.event_at = None, store.iso(aws.clock.now() + timedelta(minutes=1))  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"AppointmentRecord\.vaccine is required"):
        store.save_appointment(broken)
    assert store.get_appointment("a1").vaccine == "Penta"  # type: ignore[union-attr]
