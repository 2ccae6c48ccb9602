"""Correctness cases a program meets in the field, each a scenario through `rappel simulate` (issue 10).

Each test failed on the code before its fix. They reuse the builders and the invariant check of test_scenarios.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.e2e.conftest import ProviderRequest
from tests.e2e.test_scenarios import (
    ABIDJAN,
    NAIROBI,
    assert_invariants,
    at_local,
    by_type,
    describe,
    dose_event,
    max_per_second,
    one_patient,
    patient_event,
    phone,
    run,
    scenario,
    sends_of,
    utc,
)

pytestmark = pytest.mark.e2e
DUE = "2027-03-12"


def families(count: int, due: str = DUE) -> list[dict[str, Any]]:
    """`count` families, one child each, all due on `due` in Abidjan (numbers 1..count)."""
    return [e for n in range(1, count + 1) for e in one_patient(due, number=n, name=f"Enfant{n}")]


# ---------------------------------------------------------------------------------------------- 1. one number's 403


def test_a_403_for_one_recipient_fails_that_message_and_holds_nothing(provider_requests: list[ProviderRequest]) -> None:
    """Orange refuses two numbers with 403 (the gateway shape and a POL0001); the account itself can send."""
    refused = {phone(9): {"status": 403}, phone(8): {"status": 403, "message_id": "POL0001"}}
    faults = [{"to": number, **fault} for number, fault in refused.items()]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", families(10), faults=faults)
    out = run(data)
    assert_invariants(out, data)

    seven = at_local("2027-03-05", 9, ABIDJAN)
    for n in range(1, 11):
        reminders = by_type(out, f"a{n}")
        if phone(n) in refused:
            for m in reminders.values():
                assert m["status"] == "failed" and m["attempts"] == 1 and m["sent_at"] is None, describe(out)
                assert "403" in m["last_error"] or "POL0001" in m["last_error"]
        else:
            assert {m["status"] for m in reminders.values()} == {"delivered"}, describe(out)
            # Not held: the 7-day reminders go out in the minutes after 09:00, not 30 minutes later.
            assert utc(reminders["7_day_reminder"]["sent_at"]) < seven + timedelta(minutes=5), describe(out)
    # Each refused reminder was asked once, never again after a hold.
    for number in refused:
        assert len([r for r in provider_requests if r.to == number]) == 3


# ---------------------------------------------------------------------------------------------- intake


def _rejections(out: dict[str, Any]) -> list[str]:
    return [e["error"] for e in out["stats"]["events"]["errors"]]


def test_a_landline_is_refused_naming_the_phone_and_nothing_is_planned() -> None:
    events = [
        patient_event("2027-03-01T08:00:00Z", "p1", "+254202000000", zone=ABIDJAN),  # a Nairobi fixed line
        dose_event("2027-03-01T08:00:00Z", "a1", "p1", DUE),
        *one_patient(DUE, number=2),
    ]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-06T00:00:00Z", events)
    out = run(data)
    assert_invariants(out, data)
    assert any(e.startswith("detail.phone:") and "cannot receive SMS" in e for e in _rejections(out)), out["stats"]
    assert not [m for m in out["messages"] if m["patient_id"] == "p1"]
    assert not [s for s in out["sends"] if s["to"] == "+254202000000"]
    assert by_type(out, "a2")["7_day_reminder"]["status"] == "delivered"


@pytest.mark.parametrize(
    ("field", "value"),
    [("display_name", "\x07"), ("display_name", "\u200b"), ("display_name", " \u200b\t"), ("vaccine", "\u200b\x00")],
)
def test_a_blank_or_control_character_text_is_refused_at_intake(field: str, value: str) -> None:
    patient = patient_event("2027-03-01T08:00:00Z", "p1", phone(1))
    dose = dose_event("2027-03-01T08:00:00Z", "a1", "p1", DUE)
    (dose if field == "vaccine" else patient)["detail"][field] = value
    data = scenario("2027-03-01T00:00:00Z", "2027-03-06T00:00:00Z", [patient, dose])
    out = run(data)
    assert out["stats"]["handler_errors"] == 0
    assert any(e.startswith(f"detail.{field}:") for e in _rejections(out)), out["stats"]["events"]
    assert not out["sends"]


def test_control_characters_inside_a_name_are_removed_not_sent() -> None:
    events = one_patient(DUE, name="A\u200bwa\x07 \t Traoré")
    data = scenario("2027-03-01T00:00:00Z", "2027-03-06T00:00:00Z", events)
    out = run(data)
    assert_invariants(out, data)
    (send,) = out["sends"]
    assert "Awa Traoré" in send["text"] and "\u200b" not in send["text"] and "\x07" not in send["text"]


def test_half_an_emoji_is_removed_not_a_crash_of_planning() -> None:
    """A producer that cuts a string inside an emoji's surrogate pair sends valid JSON ("\\ud83d") that Python reads
    as a lone surrogate, which no store can encode: planning raised on the write, EventBridge retried the event into
    the planning dead letter queue, and `rappel replay-events` failed on it again. The half character goes, as
    invisible characters do."""
    events = one_patient(DUE, name="Awa \ud83d")
    events[1]["detail"]["clinic"] = "CSU \udc00Abobo"
    data = scenario("2027-03-01T00:00:00Z", "2027-03-06T00:00:00Z", events)
    out = run(data)
    assert out["stats"]["handler_errors"] == 0
    assert_invariants(out, data)
    (send,) = out["sends"]
    assert "Awa" in send["text"] and "CSU Abobo" in send["text"]


def test_a_name_of_half_characters_alone_is_refused_naming_it() -> None:
    patient = patient_event("2027-03-01T08:00:00Z", "p1", phone(1))
    patient["detail"]["display_name"] = "\ud83d\ude00"[:1]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-06T00:00:00Z", [patient])
    out = run(data)
    assert out["stats"]["handler_errors"] == 0
    assert any(e.startswith("detail.display_name:") for e in _rejections(out)), out["stats"]["events"]


def test_an_event_stamped_in_the_future_is_refused_naming_time_and_later_updates_apply() -> None:
    """A clinic PC a year ahead sends an update; the correct opt-out that follows must still stop the reminders."""
    events = [
        *one_patient(DUE),
        {**patient_event("2027-03-02T08:00:00Z", "p1", phone(1), name="Awa B"), "time": "2028-03-02T08:00:00Z"},
        patient_event("2027-03-03T08:00:00Z", "p1", phone(1), opt_in=False),
    ]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", events)
    out = run(data)
    assert_invariants(out, data)
    assert any(e.startswith("time:") and "ahead" in e for e in _rejections(out)), out["stats"]["events"]
    assert not out["sends"], describe(out)
    assert {m["status"] for m in out["messages"]} == {"cancelled"}


def test_an_opt_out_in_the_same_second_as_an_update_wins_whatever_the_event_ids() -> None:
    """Two updates stamped in one second: the opt-out (the safe side) wins, whichever id sorts first."""
    for update_id, opt_out_id in (("evt-b", "evt-a"), ("evt-a", "evt-b")):
        events = [
            *one_patient(DUE),
            {**patient_event("2027-03-02T08:00:00Z", "p1", phone(1), name="Awa B"), "id": update_id},
            {**patient_event("2027-03-02T08:00:00Z", "p1", phone(1), opt_in=False), "id": opt_out_id},
        ]
        data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", events)
        out = run(data)
        assert_invariants(out, data)
        assert not out["sends"], (opt_out_id, describe(out))


def test_a_due_date_just_past_the_horizon_is_refused() -> None:
    """MAX_DUE_DATE_YEARS_AHEAD=3 from 2027-03-01: 2030-03-01 is accepted, 2030-12-31 is not (same year)."""
    events = [
        patient_event("2027-03-01T08:00:00Z", "p1", phone(1)),
        dose_event("2027-03-01T08:00:00Z", "a1", "p1", "2030-03-01"),
        dose_event("2027-03-01T08:00:00Z", "a2", "p1", "2030-12-31"),
    ]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-02T00:00:00Z", events)
    out = run(data)
    assert {m["appointment_id"] for m in out["messages"]} == {"a1"}
    assert any(e.startswith("detail.due_date:") for e in _rejections(out)), out["stats"]["events"]


# ---------------------------------------------------------------------------------------------- 3. evening preference


@pytest.mark.parametrize("hour", [20, 22, 23])
def test_an_evening_preference_keeps_every_reminder_on_its_day_before_quiet_hours(hour: int) -> None:
    """Quiet hours 20:00-08:00: a 20-23h preference goes out at 19:00 on the intended day, never the next morning
    (which would drop the 1-day reminder onto the due date and move the others a day)."""
    events = one_patient(DUE, zone=NAIROBI, preferred_hour=hour)
    data = scenario("2027-03-01T00:00:00Z", "2027-03-16T00:00:00Z", events)
    out = run(data)
    assert_invariants(out, data)
    reminders = by_type(out, "a1")
    days = {"7_day_reminder": "2027-03-05", "1_day_reminder": "2027-03-11", "overdue_reminder": "2027-03-13"}
    assert set(reminders) == set(days), describe(out)
    for reminder_type, day in days.items():
        m = reminders[reminder_type]
        assert m["status"] == "delivered", describe(out)
        assert utc(m["scheduled_at"]) == at_local(day, 19, NAIROBI), (reminder_type, m["scheduled_at"])


# ---------------------------------------------------------------------------------------------- 4, 5. appointments


def test_an_appointment_moved_to_another_child_reminds_the_new_family_only() -> None:
    """Booked on p1 by mistake, corrected to p2 (same appointment id and date) before any reminder."""
    events = [
        patient_event("2027-03-01T08:00:00Z", "p1", phone(1), name="Awa"),
        patient_event("2027-03-01T08:00:00Z", "p2", phone(2), name="Kofi"),
        dose_event("2027-03-01T08:00:00Z", "a1", "p1", DUE),
        dose_event("2027-03-02T08:00:00Z", "a1", "p2", DUE),
    ]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", events)
    out = run(data)
    assert_invariants(out, data)
    assert not [s for s in out["sends"] if s["to"] == phone(1)], describe(out)
    to_p2 = [s for s in out["sends"] if s["to"] == phone(2)]
    assert len(to_p2) == 3 and all("Kofi" in s["text"] for s in to_p2), describe(out)
    moved = [m for m in out["messages"] if m["patient_id"] == "p1"]
    assert moved and all(m["status"] == "cancelled" and "another patient" in m["last_error"] for m in moved)


def test_a_dose_given_before_its_schedule_arrives_is_kept_and_nothing_is_sent() -> None:
    """The clinic's sync sends DoseAdministered first, then the (older) DoseScheduled."""
    events = [
        patient_event("2027-03-01T08:00:00Z", "p1", phone(1)),
        {
            **{"at": "2027-03-02T08:00:00Z", "type": "DoseAdministered"},
            "detail": {"appointment_id": "a1", "administered_on": "2027-03-02"},
        },
        {**dose_event("2027-03-02T08:05:00Z", "a1", "p1", DUE), "time": "2027-03-01T09:00:00Z"},
        *one_patient(DUE, number=2),
    ]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", events)
    out = run(data)
    assert_invariants(out, data)
    assert not [s for s in out["sends"] if s["to"] == phone(1)], describe(out)
    assert {m["status"] for m in by_type(out, "a2").values()} == {"delivered"}


# ---------------------------------------------------------------------------------------------- 2. reversals


def _moved(at: str, to: str) -> dict[str, Any]:
    return dose_event(at, "a1", "p1", to)


@pytest.mark.parametrize(
    "cause, reversal",
    [
        (_moved("2027-03-02T08:00:00Z", "2027-03-26"), _moved("2027-03-03T08:00:00Z", DUE)),
        (
            patient_event("2027-03-02T08:00:00Z", "p1", phone(1), opt_in=False),
            patient_event("2027-03-03T08:00:00Z", "p1", phone(1)),
        ),
        (
            {"at": "2027-03-02T08:00:00Z", "type": "AppointmentCancelled", "detail": {"appointment_id": "a1"}},
            _moved("2027-03-03T08:00:00Z", DUE),
        ),
    ],
    ids=["moved-and-back", "opt-out-then-in", "cancelled-then-rebooked"],
)
def test_a_reversed_cancellation_brings_its_reminders_back(cause: dict[str, Any], reversal: dict[str, Any]) -> None:
    data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", [*one_patient(DUE), cause, reversal])
    out = run(data)
    assert_invariants(out, data)
    reminders = by_type(out, "a1", DUE)
    assert {m["status"] for m in reminders.values()} == {"delivered"}, describe(out)
    assert len(reminders) == 3 and len(out["sends"]) == 3, describe(out)
    assert all("cancelled" in (m["revived"] or "") for m in reminders.values()), describe(out)


def test_a_reversal_after_a_send_never_sends_it_again() -> None:
    """The 7-day reminder went out on 03-05; the dose moves away on 03-06 and back on 03-07."""
    events = [*one_patient(DUE), _moved("2027-03-06T08:00:00Z", "2027-03-26"), _moved("2027-03-07T08:00:00Z", DUE)]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", events)
    out = run(data)
    assert_invariants(out, data)
    reminders = by_type(out, "a1", DUE)
    assert {m["status"] for m in reminders.values()} == {"delivered"}, describe(out)
    assert len(sends_of(out, reminders["7_day_reminder"]["message_id"])) == 1, describe(out)
    assert len(out["sends"]) == 3, describe(out)


def test_a_reversal_after_the_deadline_revives_nothing() -> None:
    """Opted out on 03-04, in again on 03-14: every reminder for 03-12 is past its deadline but the overdue one."""
    events = [
        *one_patient(DUE),
        patient_event("2027-03-04T08:00:00Z", "p1", phone(1), opt_in=False),
        patient_event("2027-03-14T08:00:00Z", "p1", phone(1)),
    ]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-17T00:00:00Z", events)
    out = run(data)
    assert_invariants(out, data)
    reminders = by_type(out, "a1", DUE)
    assert reminders["7_day_reminder"]["status"] == "cancelled", describe(out)
    assert reminders["1_day_reminder"]["status"] == "cancelled", describe(out)
    assert reminders["overdue_reminder"]["status"] == "delivered", describe(out)


# ---------------------------------------------------------------------------------------------- 6. a stop by number


def test_an_operator_opt_out_by_phone_survives_routine_updates_and_covers_a_later_sibling() -> None:
    events = [
        *one_patient(DUE),
        {"at": "2027-03-02T08:00:00Z", "type": "OptOutByPhone", "detail": {"phone": phone(1)}},
        # A routine update (a name correction, a register re-import) still carries sms_opt_in: true.
        patient_event("2027-03-03T08:00:00Z", "p1", phone(1), name="Awa K."),
        # A sibling registered later on the same phone.
        patient_event("2027-03-04T08:00:00Z", "p2", phone(1), name="Kofi"),
        dose_event("2027-03-04T08:00:00Z", "a2", "p2", DUE),
    ]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", events)
    out = run(data)
    assert_invariants(out, data)
    assert not out["sends"], describe(out)


def test_an_explicit_opt_in_after_a_stop_by_phone_plans_reminders_again() -> None:
    """The clinic marks the family's renewed consent (`sms_opt_in_renewed`), or the operator runs `rappel optin`."""
    renewed = patient_event("2027-03-03T08:00:00Z", "p1", phone(1))
    renewed["detail"]["sms_opt_in_renewed"] = True
    for opt_in in (renewed, {"at": "2027-03-03T08:00:00Z", "type": "OptInByPhone", "detail": {"phone": phone(1)}}):
        events = [
            patient_event("2027-03-01T08:00:00Z", "p1", phone(1)),
            {"at": "2027-03-02T08:00:00Z", "type": "OptOutByPhone", "detail": {"phone": phone(1)}},
            opt_in,
            dose_event("2027-03-04T08:00:00Z", "a1", "p1", DUE),
        ]
        data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", events)
        out = run(data)
        assert_invariants(out, data)
        assert len(out["sends"]) == 3, (opt_in["type"], describe(out))


# ---------------------------------------------------------------------------------------------- the checker itself


def _check(data: dict[str, Any], out: dict[str, Any], *, refused_opt_outs: bool = False) -> dict[str, list[str]]:
    """The project's checker on an output; with `refused_opt_outs`, as if the pipeline had refused every opt-out."""
    from core.settings import build_settings
    from rappel_local.invariants import check_invariants
    from rappel_local.scenario import load_scenario

    loaded = load_scenario(data)
    refused = {id(e) for e in loaded.events if refused_opt_outs and e.detail.get("sms_opt_in") is False}
    settings = build_settings(**{k: str(v) for k, v in data["settings"].items()})
    result = check_invariants(loaded, settings, out["messages"], out["sends"], refused)
    violations: dict[str, list[str]] = result["violations"]
    return violations


def test_the_checker_sees_a_missing_reminder_and_a_send_to_the_wrong_family() -> None:
    data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", families(2))
    out = run(data)
    assert _check(data, out)["missing"] == [] and _check(data, out)["sent_to_wrong_family"] == []

    dropped = {
        **out,
        "messages": [
            m for m in out["messages"] if m["message_id"] != by_type(out, "a1")["1_day_reminder"]["message_id"]
        ],
    }
    assert _check(data, dropped)["missing"] == ["a1 1_day_reminder for 2027-03-12 (p1) was never planned"]

    swapped = {**out, "sends": [{**s, "to": phone(2)} if s["to"] == phone(1) else s for s in out["sends"]]}
    assert len(_check(data, swapped)["sent_to_wrong_family"]) == 3

    # An event after `until` never ran: a reschedule there must not stand for a1's last schedule and hide the gap.
    late = dose_event("2027-03-20T08:00:00Z", "a1", "p1", "2027-04-20")
    with_late = {**data, "events": [*data["events"], late]}
    assert _check(with_late, dropped)["missing"] == ["a1 1_day_reminder for 2027-03-12 (p1) was never planned"]


def test_the_checker_sees_a_status_that_disagrees_with_what_the_provider_accepted() -> None:
    """`delivered` with no accepted SMS carrying it, or `expired` with one that did: either is a lost record of a
    send, which no other check would see (the e2e tests checked it; `make run` and `rappel simulate` did not)."""
    data = scenario("2027-03-01T00:00:00Z", "2027-03-12T00:00:00Z", one_patient(DUE))  # the overdue one waits
    out = run(data)
    assert _check(data, out)["status_disagrees_with_sends"] == []
    carried = {mid for s in out["sends"] for mid in s["message_ids"]}
    sent = next(m for m in out["messages"] if m["message_id"] in carried)
    unsent = next(m for m in out["messages"] if m["message_id"] not in carried)

    forgotten = {**out, "sends": [s for s in out["sends"] if sent["message_id"] not in s["message_ids"]]}
    assert _check(data, forgotten)["status_disagrees_with_sends"] == [
        f"{sent['message_id']} is {sent['status']}, carried by 0 accepted SMS"
    ]
    expired = {**out, "messages": [{**m, "status": "expired"} if m is sent else m for m in out["messages"]]}
    assert _check(data, expired)["status_disagrees_with_sends"] == [
        f"{sent['message_id']} is expired, carried by 1 accepted SMS"
    ]
    assert unsent["message_id"] not in str(_check(data, expired))


def test_a_send_is_attributed_to_every_reminder_it_carried_even_one_whose_record_names_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checker attributes an accepted SMS to the reminders the sender stored with the call (its idempotency
    record), not only to those whose "sent" write named it: a reminder carried a second time, whose second write
    was refused, would otherwise go uncounted in that SMS, and its double send unseen."""
    from rappel_local import simulate as simulation

    real = simulation._message_json

    def first_sibling_names_no_sms(message: Any, patients: Any) -> dict[str, Any]:
        shown = real(message, patients)
        if shown["patient_id"] == "p1":
            shown.update(provider_message_id=None, text=None)
        return shown

    monkeypatch.setattr(simulation, "_message_json", first_sibling_names_no_sms)
    siblings = [*one_patient(DUE), *one_patient(DUE, number=2, name="Kofi")]
    siblings[2]["detail"]["phone"] = phone(1)  # one phone: each reminder goes out in one SMS for both
    out = run(scenario("2027-03-01T00:00:00Z", "2027-03-06T00:00:00Z", siblings))

    (send,) = out["sends"]
    assert sorted(send["message_ids"]) == sorted(
        m["message_id"] for m in out["messages"] if m["reminder_type"] == "7_day_reminder"
    )


def test_a_run_whose_receipts_the_function_refused_is_not_a_clean_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """delivery_receipt crashing on every receipt: the gateways do not send a receipt again, so each is lost; the
    reminders stay `sent`, which no other check refuses. It used to report ok with no handler error."""
    from core import receipts

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the receipt path")

    monkeypatch.setattr(receipts, "_members_of_sms", crash)  # looked up when called: the handler meets it
    out = run(scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", one_patient(DUE)))

    assert out["stats"]["receipts_refused"] == len(out["sends"]) > 0
    assert out["stats"]["invariants"]["violations"]["receipts_refused"] and not out["stats"]["invariants"]["ok"]


def test_the_checker_judges_quiet_hours_in_the_zone_at_send_time_and_ignores_refused_events() -> None:
    """A family moves from Abidjan to Paris after a 09:00 Abidjan send (10:00 Paris: fine either way), then one
    moves to Honolulu (09:00 Abidjan is 23:00 there): judged in the final zone, the first send would be at night."""
    events = [*one_patient(DUE), patient_event("2027-03-06T08:00:00Z", "p1", phone(1), zone="Pacific/Honolulu")]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-06T00:00:00Z", events)
    out = run(data)
    (send,) = out["sends"]
    assert _check(data, out)["sent_in_quiet_hours"] == []

    # An opt-out the pipeline refused (say, stamped in the future) stops nothing.
    opt_out = patient_event("2027-03-04T08:00:00Z", "p1", phone(1), opt_in=False)
    data = scenario("2027-03-01T00:00:00Z", "2027-03-06T00:00:00Z", [*one_patient(DUE), opt_out])
    assert _check(data, out)["sent_after_stop"] == [send["message_id"]]
    assert _check(data, out, refused_opt_outs=True)["sent_after_stop"] == []


# ---------------------------------------------------------------------------------------------- 15. dead letters end


def test_a_dead_letter_never_redriven_expires_at_its_deadline_with_the_reason() -> None:
    # Every request fails, and this family is the provider's only traffic: its circuit would open and spare the
    # attempts (tests/e2e/test_outages.py). Here the failures are the messages' own, so the circuit stays out of it.
    faults = [{"to": phone(1), "status": 503}]
    settings = {"SMS_MAX_RETRIES": 1, "SMS_CIRCUIT_FAILURES": 100}
    data = scenario("2027-03-01T00:00:00Z", "2027-03-17T00:00:00Z", one_patient(DUE), faults=faults, settings=settings)
    out = run(data)
    assert_invariants(out, data)
    for m in by_type(out, "a1").values():
        assert m["status"] == "expired", describe(out)
        assert "dead letter" in m["last_error"] and "retries exhausted" in m["last_error"], m["last_error"]


# ---------------------------------------------------------------------------------------------- 13. quiet hours


def test_a_send_that_would_land_in_quiet_hours_after_pacing_waits_for_the_morning() -> None:
    """60 reminders at 19:59 through a slow provider (2.1 s a call), two senders making one call at a time: the last
    ones would reach it after 20:00. Each is re-checked just before its request, with the call's time allowed for."""
    data = scenario(
        "2027-03-01T00:00:00Z",
        "2027-03-06T12:00:00Z",
        families(60),
        settings={"REMINDER_7_DAY_TIME": "19:59", "SMS_SENDER_CALLS_IN_FLIGHT": 1, "SMS_SENDER_MAX_CONCURRENCY": 2},
        latency_ms=2100,
    )
    out = run(data)
    assert_invariants(out, data)
    seven = [m for m in out["messages"] if m["reminder_type"] == "7_day_reminder"]
    assert {m["status"] for m in seven} == {"delivered"}, describe(out)
    late = [m for m in seven if utc(m["sent_at"]) >= at_local("2027-03-06", 8, ABIDJAN)]
    assert late, "no send was pushed to the morning: the scenario does not cross 20:00"


# ---------------------------------------------------------------------------------------------- 9. throttling


def test_a_provider_slower_than_our_rate_slows_us_down_without_burning_attempts(
    provider_requests: list[ProviderRequest],
) -> None:
    """Our limit 5/s, the provider's 1/s: 40 reminders due at once. Throttling is back-pressure, not failure."""
    data = scenario(
        "2027-03-01T00:00:00Z",
        "2027-03-06T00:00:00Z",
        families(40),
        settings={"SMS_RATE_LIMIT_PER_SECOND": 5},
        rate_limit_per_second=1,
    )
    out = run(data)
    assert_invariants(out, data)
    seven = [m for m in out["messages"] if m["reminder_type"] == "7_day_reminder"]
    assert {m["status"] for m in seven} == {"delivered"}, describe(out)
    assert all(m["attempts"] == 1 for m in seven), describe(out)
    assert [r for r in provider_requests if r.status == 429], "the provider never throttled"


# ---------------------------------------------------------------------------------------------- 14. pacing


def test_a_slow_token_fetch_never_bunches_sends_past_the_limit() -> None:
    """Limit 2/s, two senders at 1/s each, 700 ms per provider call: the first sender's first request waits for the
    OAuth token. Its pace is that of its requests, so the next one does not follow 300 ms later."""
    data = scenario(
        "2027-03-01T00:00:00Z",
        "2027-03-05T12:00:00Z",
        families(30),
        settings={"SMS_RATE_LIMIT_PER_SECOND": 2, "SMS_SENDER_MAX_CONCURRENCY": 2, "SMS_BATCH_SIZE": 5},
        latency_ms=700,
    )
    out = run(data)
    assert_invariants(out, data)
    assert len(out["sends"]) == 30, describe(out)
    assert max_per_second([utc(s["at"]) for s in out["sends"]]) <= 2


# ---------------------------------------------------------------------------------------------- the provider's rate


@pytest.mark.parametrize(("calls_in_flight", "most_ratio"), [(8, 1.25), (1, None)])
def test_a_slow_provider_still_gets_the_full_rate(calls_in_flight: int, most_ratio: float | None) -> None:
    """99 reminders due at once, limit 10/s, a provider that takes 400 ms: one call at a time per sender caps two
    senders at 5/s; calls in flight fill the limit (virtual time, so the figure is exact)."""
    data = scenario(
        "2027-03-01T00:00:00Z",
        "2027-03-06T00:00:00Z",
        families(99),
        settings={
            "SMS_RATE_LIMIT_PER_SECOND": 10,
            "SMS_SENDER_MAX_CONCURRENCY": 2,
            "SMS_SENDER_CALLS_IN_FLIGHT": calls_in_flight,
        },
        latency_ms=400,
    )
    out = run(data)
    assert_invariants(out, data)
    sends = sorted(utc(s["at"]) for s in out["sends"])
    assert len(sends) == 99, describe(out)
    makespan = (sends[-1] - at_local("2027-03-05", 9, ABIDJAN)).total_seconds()
    ideal = 99 / 10
    if most_ratio is not None:
        assert makespan <= most_ratio * ideal, (makespan, ideal)
    else:
        assert makespan >= 1.8 * ideal, (makespan, ideal)  # the ceiling of one call at a time: 2 / 0.4 s = 5/s
