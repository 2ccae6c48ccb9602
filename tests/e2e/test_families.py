"""Families, not rows: reminders that would reach one phone in one send slot go out as one SMS (issue 11)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.test_scenarios import (
    ABIDJAN,
    CrashInjector,
    administered_event,
    assert_invariants,
    by_type,
    deliver_every_batch_twice,
    describe,
    dose_event,
    handler_tracking,  # noqa: F401 - the fixture the crash tests use
    install_at,
    patient_event,
    phone,
    run,
    scenario,
    sends_of,
    utc,
)

pytestmark = pytest.mark.e2e
DUE = "2027-03-12"
START, UNTIL = "2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z"


def siblings(**settings: Any) -> dict[str, Any]:
    """Awa and Kofi share their caregiver's phone; both have a dose due the same day at the same clinic."""
    events = [
        patient_event("2027-03-01T08:00:00Z", "p1", phone(1), name="Awa"),
        patient_event("2027-03-01T08:00:00Z", "p2", phone(1), name="Kofi"),
        dose_event("2027-03-01T08:00:00Z", "a1", "p1", DUE),
        dose_event("2027-03-01T08:00:00Z", "a2", "p2", DUE, vaccine="VPO"),
    ]
    return scenario(START, UNTIL, events, settings=settings)


def test_two_children_sharing_a_phone_get_three_sms_each_naming_both() -> None:
    data = siblings()
    out = run(data)
    assert_invariants(out, data)
    assert len(out["messages"]) == 6 and {m["status"] for m in out["messages"]} == {"delivered"}, describe(out)
    assert len(out["sends"]) == 3, describe(out)
    for send in out["sends"]:
        assert len(send["message_ids"]) == 2 and "Awa" in send["text"] and "Kofi" in send["text"], send
        assert "Penta" in send["text"] and "VPO" in send["text"] and "CSU Abobo" in send["text"], send
        # The SMS's own id (its key), not one of the reminders it carried.
        assert send["message_id"].startswith("sms_") and send["message_id"] not in send["message_ids"], send
    # One receipt settled both reminders of each SMS.
    for m in out["messages"]:
        (carrier,) = sends_of(out, m["message_id"])
        assert m["provider_message_id"] == carrier["provider_message_id"]


def test_reminders_of_different_types_and_dates_in_one_slot_go_as_one_sms_naming_each_date() -> None:
    """Awa's dose is due on the 12th, Kofi's on the 6th: Awa's 7-day and Kofi's 1-day reminders both fall on the
    5th at 09:00 on the phone they share. One SMS per phone per send slot: one SMS naming both children, both
    doses and both dates (they went as two)."""
    data = siblings()
    data["events"][3]["detail"]["due_date"] = "2027-03-06"
    data["events"].append(administered_event("2027-03-06T10:00:00Z", "a2", "2027-03-06"))
    out = run(data)
    assert_invariants(out, data)
    fifth = [s for s in out["sends"] if s["at"].startswith("2027-03-05")]
    assert len(fifth) == 1, describe(out)
    (sms,) = fifth
    assert {
        by_type(out, "a1")["7_day_reminder"]["message_id"],
        by_type(out, "a2")["1_day_reminder"]["message_id"],
    } == set(sms["message_ids"]), sms
    for word in ("Awa", "Kofi", "Penta", "VPO", "12 mars", "6 mars", "CSU Abobo"):
        assert word in sms["text"], (word, sms["text"])
    assert sms["text"].count("CSU Abobo") == 1, sms["text"]
    carried = {m["message_id"]: m for m in out["messages"] if m["message_id"] in sms["message_ids"]}
    assert {m["status"] for m in carried.values()} == {"delivered"}, describe(out)


def test_a_discreet_sms_of_two_dates_names_both_dates_and_no_child() -> None:
    data = siblings(SMS_DISCREET_TEXTS=True)
    data["events"][3]["detail"]["due_date"] = "2027-03-06"
    out = run(data)
    assert_invariants(out, data)
    (sms,) = [s for s in out["sends"] if s["at"].startswith("2027-03-05")]
    assert len(sms["message_ids"]) == 2 and "12 mars" in sms["text"] and "6 mars" in sms["text"], sms
    assert not any(word in sms["text"] for word in ("Awa", "Kofi", "Penta", "VPO")), sms["text"]


def test_without_grouping_each_reminder_is_its_own_sms() -> None:
    data = siblings(SMS_GROUP_BY_PHONE=False)
    out = run(data)
    assert_invariants(out, data)
    assert len(out["sends"]) == 6 and all(len(s["message_ids"]) == 1 for s in out["sends"]), describe(out)
    assert all(s["message_id"] == s["message_ids"][0] for s in out["sends"])  # a lone reminder's SMS: its own id


def test_one_child_booked_once_per_vaccine_gets_three_sms() -> None:
    events = [
        patient_event("2027-03-01T08:00:00Z", "p1", phone(1), name="Awa"),
        *(
            dose_event("2027-03-01T08:00:00Z", f"a{n}", "p1", DUE, vaccine=v)
            for n, v in enumerate(("Penta", "VPO", "PCV13"), 1)
        ),
    ]
    data = scenario(START, UNTIL, events)
    out = run(data)
    assert_invariants(out, data)
    assert len(out["messages"]) == 9 and {m["status"] for m in out["messages"]} == {"delivered"}, describe(out)
    assert len(out["sends"]) == 3, describe(out)
    for send in out["sends"]:
        assert len(send["message_ids"]) == 3 and all(v in send["text"] for v in ("Penta", "VPO", "PCV13")), send
        assert send["text"].count("Awa") == 1, send["text"]


def test_a_sibling_whose_dose_was_given_is_left_out_of_the_sms() -> None:
    data = siblings()
    data["events"].append(administered_event("2027-03-03T08:00:00Z", "a2", "2027-03-03"))
    out = run(data)
    assert_invariants(out, data)
    assert len(out["sends"]) == 3, describe(out)
    assert all("Awa" in s["text"] and "Kofi" not in s["text"] for s in out["sends"]), describe(out)
    assert {m["status"] for m in by_type(out, "a2").values()} == {"cancelled"}


def test_names_too_long_for_one_sms_are_split_by_child_never_truncated() -> None:
    """One segment allowed; two 30-character names and their doses do not fit in one, each alone does."""
    long_a, long_b = "Awa Konan Brou Aya Kouassi Ama", "Kofi Yao Koffi N'Guessan Kouam"
    data = siblings(SMS_MAX_SEGMENTS=1)
    data["events"][0]["detail"]["display_name"] = long_a
    data["events"][1]["detail"]["display_name"] = long_b
    out = run(data)
    assert_invariants(out, data)
    assert {m["status"] for m in out["messages"]} == {"delivered"}, describe(out)
    assert len(out["sends"]) == 6 and all(len(s["message_ids"]) == 1 for s in out["sends"]), describe(out)
    assert all(long_a in s["text"] or long_b in s["text"] for s in out["sends"]), describe(out)


def test_siblings_with_two_languages_get_the_first_childs_language() -> None:
    """One SMS has one language: that of the first child by patient id (p1, French here)."""
    data = siblings()
    data["events"][1]["detail"]["language"] = "en"
    out = run(data)
    assert_invariants(out, data)
    assert len(out["sends"]) == 3 and all(
        s["text"].startswith(("Rappel", "N'oubliez", "Vaccins")) for s in out["sends"]
    )


# ---------------------------------------------------------------------------------------------- crashes


@pytest.fixture(scope="module")
def grouped_baseline() -> dict[str, Any]:
    data = siblings()
    out = run(data)
    return {m["message_id"]: (m["status"], len(sends_of(out, m["message_id"]))) for m in out["messages"]}


GROUPED_CRASHES = [
    ("bind_to_sms", "before", 1),  # nothing bound yet
    ("bind_to_sms", "after", 1),  # one sibling bound, the other not
    ("bind_to_sms", "after", 2),  # both bound, the request never made
    ("send", "before", 1),  # the request never leaves
    ("send", "after", 1),  # the provider accepted the SMS; neither reminder recorded sent
    ("transition", "after", 3),  # one sibling recorded sent, the other not
]


@pytest.mark.parametrize(("point", "when", "nth"), GROUPED_CRASHES, ids=[f"{p}-{w}-{n}" for p, w, n in GROUPED_CRASHES])
def test_a_crash_between_the_writes_of_a_grouped_sms_loses_nothing_and_sends_nothing_twice(
    point: str,
    when: str,
    nth: int,
    grouped_baseline: dict[str, Any],
    handler_tracking: None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    injector = CrashInjector(point, nth, when)
    install_at(point, injector, monkeypatch)
    data = siblings()
    out = run(data)
    assert injector.crashed, f"the run made only {injector.calls} {point} calls"
    assert_invariants(out, data, handler_errors_ok=True)
    summary = {m["message_id"]: (m["status"], len(sends_of(out, m["message_id"]))) for m in out["messages"]}
    # Sent and delivered are one outcome here: a receipt that beat our "sent" write is answered unknown.
    same = {mid: ({"sent": "delivered"}.get(st, st), n) for mid, (st, n) in summary.items()}
    assert same == grouped_baseline, describe(out)
    assert len(out["sends"]) == 3, describe(out)


def test_duplicate_sqs_deliveries_of_a_grouped_sms_send_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch is delivered a second time, to the next sender instance."""
    duplicated = deliver_every_batch_twice(monkeypatch)
    data = siblings()
    out = run(data)
    assert duplicated, "no batch was delivered twice"
    assert_invariants(out, data)
    assert len(out["sends"]) == 3 and all(len(s["message_ids"]) == 2 for s in out["sends"]), describe(out)


# ---------------------------------------------------------------------------------------------- discreet texts


def test_a_discreet_family_gets_texts_without_names_or_vaccines_even_grouped() -> None:
    """Kofi's record asks for discretion; his SMS is shared with Awa's, so the whole SMS is discreet."""
    data = siblings()
    data["events"][1]["detail"]["discreet"] = True
    data["events"] += [
        patient_event("2027-03-01T08:00:00Z", "p3", phone(3), name="Fatou"),
        dose_event("2027-03-01T08:00:00Z", "a3", "p3", DUE),
    ]
    out = run(data)
    assert_invariants(out, data)
    shared = [s for s in out["sends"] if s["to"] == phone(1)]
    assert len(shared) == 3 and all(len(s["message_ids"]) == 2 for s in shared), describe(out)
    for send in shared:
        assert not any(word in send["text"] for word in ("Awa", "Kofi", "Penta", "VPO")), send["text"]
        assert "vaccination" in send["text"] and "12" in send["text"]
    assert all("Fatou" in s["text"] for s in out["sends"] if s["to"] == phone(3))


def test_the_program_default_makes_every_text_discreet() -> None:
    data = siblings(SMS_DISCREET_TEXTS=True)
    out = run(data)
    assert_invariants(out, data)
    assert len(out["sends"]) == 3, describe(out)
    assert not any(name in s["text"] for s in out["sends"] for name in ("Awa", "Kofi", "Penta")), describe(out)


def test_a_discreet_flag_that_is_not_a_boolean_is_refused_naming_the_field() -> None:
    data = siblings()
    data["events"][1]["detail"]["discreet"] = "yes"
    out = run(data)
    errors = [e["error"] for e in out["stats"]["events"]["errors"]]
    assert any("detail.discreet" in e for e in errors), errors
    assert not [m for m in out["messages"] if m["patient_id"] == "p2"]


# ---------------------------------------------------------------------------------------------- partial updates


def _a_new_phone_only(first: dict[str, Any]) -> dict[str, Any]:
    """The clinic system records a new phone and sends the patient's fields it keeps: not the optional ones."""
    update = patient_event("2027-03-06T08:00:00Z", "p1", phone(2))
    update["detail"] = {k: v for k, v in update["detail"].items() if k in first["detail"] and k in REQUIRED}
    return update


REQUIRED = {"patient_id", "phone", "language", "sms_opt_in", "display_name"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("discreet", True), ("preferred_hour", 17), ("timezone", "America/New_York")],
)
def test_an_update_that_leaves_out_an_optional_field_keeps_its_value(field: str, value: Any) -> None:
    """A clinic system that does not know an optional field (or an export without it) sends a routine update, a new
    phone: the field used to be reset (a discreet family's texts named the child again on a shared phone, a family's
    evening hour went back to 09:00, a New York family's reminders moved to the program's zone). Left out, it keeps
    its value; given, even as null, it is changed."""
    first = patient_event("2027-03-01T08:00:00Z", "p1", phone(1))
    first["detail"][field] = value
    events = [first, dose_event("2027-03-01T08:00:00Z", "a1", "p1", DUE), _a_new_phone_only(first)]
    out = run(scenario(START, UNTIL, events))
    after = [s for s in out["sends"] if s["at"] > "2027-03-06T08:00:00Z"]
    assert after and all(s["to"] == phone(2) for s in after), describe(out)
    if field == "discreet":
        assert not any("Awa" in s["text"] or "Penta" in s["text"] for s in out["sends"]), describe(out)
    else:
        zone = ZoneInfo(value if field == "timezone" else ABIDJAN)
        (one_day,) = [s for s in after if s["at"].startswith("2027-03-11")]
        assert utc(one_day["at"]).astimezone(zone).hour == (17 if field == "preferred_hour" else 9), describe(out)


def test_an_optional_field_given_as_null_is_cleared() -> None:
    first = patient_event("2027-03-01T08:00:00Z", "p1", phone(1), preferred_hour=17)
    update = patient_event("2027-03-06T08:00:00Z", "p1", phone(1))
    update["detail"]["preferred_hour"] = None
    out = run(scenario(START, UNTIL, [first, dose_event("2027-03-01T08:00:00Z", "a1", "p1", DUE), update]))
    (one_day,) = [s for s in out["sends"] if s["at"].startswith("2027-03-11")]
    assert utc(one_day["at"]).hour == 9, describe(out)


# ---------------------------------------------------------------------------------------------- no pile-up


def late_planning(**settings: Any) -> dict[str, Any]:
    """The dose is booked the day before it is due, at 07:00; a 7-day reminder may be six days late here, so it
    is still open, and would go out at 08:00 (end of quiet hours), an hour before the 1-day reminder."""
    events = [
        patient_event("2027-03-11T07:00:00Z", "p1", phone(1), name="Awa"),
        dose_event("2027-03-11T07:00:00Z", "a1", "p1", DUE),
    ]
    return scenario(START, UNTIL, events, settings={"REMINDER_7_DAY_MAX_LATENESS_HOURS": 144, **settings})


def test_a_late_reminder_close_to_the_next_is_superseded_and_only_the_later_goes() -> None:
    data = late_planning()
    out = run(data)
    assert_invariants(out, data)
    reminders = by_type(out, "a1")
    assert reminders["7_day_reminder"]["status"] == "expired", describe(out)
    assert reminders["7_day_reminder"]["last_error"].startswith("superseded"), describe(out)
    assert reminders["1_day_reminder"]["status"] == "delivered", describe(out)
    assert len([s for s in out["sends"] if s["at"] < "2027-03-12"]) == 1, describe(out)


def test_a_gap_wider_than_the_reminders_planned_spacing_never_drops_an_on_time_reminder() -> None:
    """SMS_MIN_GAP_HOURS may be up to 72; the 1-day and overdue reminders are planned 53 h apart (09:00 the day before,
    14:00 the day after). With a 60 h gap every on-time 1-day reminder was dropped for the overdue one, which goes only
    if the dose is missed: a family that came on the due date never got a reminder the day before. Only lateness may
    bring a reminder within the gap of the next."""
    events = [
        patient_event("2027-03-01T08:00:00Z", "p1", phone(1), name="Awa"),
        dose_event("2027-03-01T08:00:00Z", "a1", "p1", DUE),
        administered_event("2027-03-12T10:00:00Z", "a1", DUE),  # the family came on the day
    ]
    data = scenario(START, UNTIL, events, settings={"SMS_MIN_GAP_HOURS": 60})
    out = run(data)
    assert_invariants(out, data)
    one_day = by_type(out, "a1")["1_day_reminder"]
    assert one_day["status"] == "delivered", describe(out)


def test_without_a_minimum_gap_both_go_within_the_hour() -> None:
    data = late_planning(SMS_MIN_GAP_HOURS=0)
    out = run(data)
    assert_invariants(out, data)
    reminders = by_type(out, "a1")
    assert reminders["7_day_reminder"]["status"] == reminders["1_day_reminder"]["status"] == "delivered", describe(out)
