"""The outcome counters and the follow-up state across every transition (core.outcomes, core.followup.judge): pure."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

import pytest

from core.followup import Verdict, judge
from core.outcomes import (
    Appointment,
    AppointmentState,
    Slot,
    about_this_dose,
    contribution,
    index_slot,
    opened,
    outcome_deltas,
    outcome_rows,
    outcome_summary,
    published,
    synced,
    watched_from,
    with_delivery,
)
from core.store import MessageRecord

DUE = "2027-03-12"
OVERDUE = "2027-03-13T00:00:00.000Z"
NOW = "2027-03-01T08:00:00.000Z"


def appointment(status: str = "scheduled", **changes: object) -> Appointment:
    fields: dict[str, object] = {
        "appointment_id": "a1",
        "patient_id": "p1",
        "clinic": "CSU Abobo",
        "due_date": DUE,
        "status": status,
        "administered_on": None,
    }
    fields.update(changes)
    return Appointment(**fields)  # type: ignore[arg-type]


def scheduled() -> AppointmentState:
    return synced(None, appointment(), OVERDUE, NOW)


def given(state: AppointmentState, on: str) -> AppointmentState:
    return synced(state, appointment("administered", administered_on=on), OVERDUE, NOW)


def totals(*states: AppointmentState | None) -> dict[str, dict[str, int]]:
    """What the counters hold after the states' successive changes, read back as `rappel stats --outcomes` does."""
    cells: Counter[tuple[str, str]] = Counter()
    for old, new in itertools.pairwise(states):
        cells.update(outcome_deltas(old, new))
    stored: dict[str, dict[str, float]] = {}
    for (sk, name), value in cells.items():
        stored.setdefault(sk, {})[name] = value
    return outcome_summary(outcome_rows(stored))


def group(appointments: int, by_due: int = 0, later: int = 0) -> dict[str, int]:
    return {
        "appointments": appointments,
        "given_by_due_date": by_due,
        "given_later": later,
        "not_given": appointments - by_due - later,
    }


# ---------------------------------------------------------------------------------------------- counters


def test_a_scheduled_dose_counts_one_appointment_not_reached() -> None:
    assert totals(None, scheduled()) == {"reached": group(0), "not_reached": group(1)}
    assert contribution(scheduled()) == {("2027-03#CSU Abobo", "not_reached#none#appointments"): 1}


def test_the_first_delivery_moves_the_appointment_to_reached_by_its_type_once() -> None:
    start = scheduled()
    reached = with_delivery(start, "7_day_reminder", NOW)
    assert reached is not None and reached.reached_type == "7_day_reminder"
    assert outcome_deltas(start, reached) == {
        ("2027-03#CSU Abobo", "not_reached#none#appointments"): -1,
        ("2027-03#CSU Abobo", "reached#7_day_reminder#appointments"): 1,
    }
    assert with_delivery(reached, "1_day_reminder", NOW) is None, "a second delivery changes nothing"
    assert totals(None, start, reached) == {"reached": group(1), "not_reached": group(0)}


@pytest.mark.parametrize(("on", "by_due", "later"), [("2027-03-10", 1, 0), ("2027-03-12", 1, 0), ("2027-03-13", 0, 1)])
def test_a_dose_given_counts_by_the_due_date_or_later(on: str, by_due: int, later: int) -> None:
    reached = with_delivery(scheduled(), "1_day_reminder", NOW)
    assert reached is not None
    assert totals(None, scheduled(), reached, given(reached, on))["reached"] == group(1, by_due, later)
    assert totals(None, scheduled(), given(scheduled(), on))["not_reached"] == group(1, by_due, later)


def test_a_delivery_after_the_dose_was_given_does_not_make_it_reached() -> None:
    done = given(scheduled(), "2027-03-11")
    assert with_delivery(done, "overdue_reminder", NOW) is None


def test_cancelled_rebooked_moved_and_corrected_keep_the_counts_those_of_the_last_state() -> None:
    start = scheduled()
    reached = with_delivery(start, "7_day_reminder", NOW)
    assert reached is not None
    cancelled = synced(reached, appointment("cancelled"), OVERDUE, NOW)
    rebooked = synced(cancelled, appointment(due_date="2027-04-02"), "2027-04-03T00:00:00.000Z", NOW)
    moved = synced(rebooked, appointment(due_date="2027-04-02", clinic="CSR Yopougon"), rebooked.overdue_at, NOW)
    given_later = synced(
        moved,
        appointment("administered", due_date="2027-04-02", clinic="CSR Yopougon", administered_on="2027-04-09"),
        moved.overdue_at,
        NOW,
    )
    corrected = synced(given_later, appointment(due_date="2027-04-02", clinic="CSR Yopougon"), moved.overdue_at, NOW)
    history = [None, start, reached, cancelled, rebooked, moved, given_later, corrected]
    assert totals(*history[:4]) == {"reached": group(0), "not_reached": group(0)}
    # Rebooked for another date: the delivery spoke of the old one, so the family is to be reached again.
    assert not rebooked.reached
    assert totals(*history[:7]) == {"reached": group(0), "not_reached": group(1, 0, 1)}
    assert totals(*history) == {"reached": group(0), "not_reached": group(1)}
    # Whatever the path, the counters equal what the last state contributes on its own (a scan would say the same).
    for end in range(1, len(history)):
        path = history[: end + 1]
        cells: Counter[tuple[str, str]] = Counter()
        for old, new in itertools.pairwise(path):
            cells.update(outcome_deltas(old, new))
        assert {c: v for c, v in cells.items() if v} == contribution(path[-1])
    rows = outcome_rows({"2027-04#CSR Yopougon": {"reached#7_day_reminder#appointments": 1}})
    assert [(r.clinic, r.group, r.reminder_type, r.figures["not_given"]) for r in rows] == [
        ("CSR Yopougon", "reached", "7_day_reminder", 1)
    ]


def test_an_appointment_moved_to_another_child_is_no_longer_reached() -> None:
    reached = with_delivery(scheduled(), "7_day_reminder", NOW)
    assert reached is not None
    moved = synced(reached, appointment(patient_id="p2"), OVERDUE, NOW)
    assert not moved.reached and moved.watch_at == OVERDUE


def test_since_month_keeps_the_later_cohorts() -> None:
    cells = {"2027-02#A": {"not_reached#none#appointments": 2}, "2027-03#A": {"not_reached#none#appointments": 3}}
    assert outcome_summary(outcome_rows(cells, since_month="2027-03"))["not_reached"]["appointments"] == 3


# ---------------------------------------------------------------------------------------------- follow-up state


def test_a_follow_up_opens_once_is_announced_then_listed_and_closes_with_the_dose() -> None:
    start = scheduled()
    assert index_slot(start) == (Slot.DUE, OVERDUE)
    opened_state = opened(start, ["1 day before: undeliverable"], "+225******08", "2027-03-13T10:00:00.000Z")
    assert opened_state is not None and opened_state.unpublished == ("needed",)
    assert index_slot(opened_state) == (Slot.DUE, "2027-03-13T10:00:00.000Z"), "in the pass's slot until announced"
    assert opened(opened_state, ["again"], None, NOW) is None, "once per appointment"
    announced = published(opened_state, "needed")
    assert announced.unpublished == () and index_slot(announced) == (Slot.OPEN, "2027-03-13T10:00:00.000Z")
    closed = given(announced, "2027-03-15")
    assert closed.follow_up == "closed" and closed.closed_why == "dose given" and closed.unpublished == ("closed",)
    done = published(closed, "closed")
    assert done.unpublished == () and index_slot(done) is None
    # The record corrected (the dose due again, the family still not reached): a new follow-up may open, the first
    # one's close being announced; watched from the overdue time.
    rebooked = synced(done, appointment(), OVERDUE, NOW)
    assert (rebooked.follow_up, rebooked.episode, index_slot(rebooked)) == (None, 1, (Slot.DUE, OVERDUE))
    again = opened(rebooked, ["x"], None, NOW)
    assert again is not None and again.unpublished == ("needed",) and again.episode == 1


def test_a_follow_up_closed_before_it_was_marked_announced_is_closed_for_the_clinic() -> None:
    """Its FollowUpNeeded may have gone out just before (the mark comes after the event): the close goes out alone."""
    opened_state = opened(scheduled(), ["x"], None, NOW)
    assert opened_state is not None
    cancelled = synced(opened_state, appointment("cancelled"), OVERDUE, NOW)
    assert cancelled.follow_up == "closed" and cancelled.unpublished == ("closed",)
    assert index_slot(cancelled) == (Slot.DUE, NOW)
    done = published(cancelled, "closed")
    assert done.unpublished == () and index_slot(done) is None


def test_a_family_reached_or_a_dose_given_is_not_watched() -> None:
    reached = with_delivery(scheduled(), "1_day_reminder", NOW)
    assert reached is not None and index_slot(reached) is None
    assert index_slot(given(scheduled(), "2027-03-12")) is None
    assert opened(reached, ["x"], None, NOW) is None
    assert index_slot(watched_from(scheduled(), None)) is None


def test_a_reschedule_watches_from_the_new_overdue_time_a_replan_keeps_a_later_watch() -> None:
    later = watched_from(scheduled(), "2027-03-16T09:00:00.000Z")
    assert synced(later, appointment(), OVERDUE, NOW).watch_at == "2027-03-16T09:00:00.000Z"
    moved = synced(later, appointment(due_date="2027-03-19"), "2027-03-20T00:00:00.000Z", NOW)
    assert moved.watch_at == "2027-03-20T00:00:00.000Z"


# ---------------------------------------------------------------------------------------------- judging


def reminder(kind: str, status: str, **fields: object) -> MessageRecord:
    base: dict[str, object] = {
        "patient_id": "p1",
        "appointment_id": "a1",
        "reminder_type": kind,
        "due_date": DUE,
        "status": status,
        "scheduled_at": {"7_day_reminder": "1", "1_day_reminder": "2", "overdue_reminder": "3"}[kind],
        "deadline": "2027-03-16T10:00:00.000Z",
        "created_at": NOW,
    }
    base.update(fields)
    return MessageRecord(f"m-{kind}", **base)


AFTER = "2027-03-17T00:00:00.000Z"


def test_judge_waits_for_the_overdue_time_and_for_reminders_still_to_go() -> None:
    failed = reminder("7_day_reminder", "failed", receipt_status="DeliveryImpossible")
    assert judge([failed], None, OVERDUE, NOW).action == "wait"
    pending = reminder("overdue_reminder", "pending")
    verdict = judge([failed, pending], None, OVERDUE, "2027-03-13T01:00:00.000Z")
    assert (verdict.action, verdict.until) == ("wait", "2027-03-16T10:00:00.000Z")
    dead_letter = reminder("1_day_reminder", "dead_letter")
    assert judge([failed, dead_letter], None, OVERDUE, "2027-03-16T09:00:00.000Z").action == "wait", (
        "until its deadline"
    )


def test_judge_a_claimed_reminder_stuck_past_its_deadline_has_ended_and_the_family_is_called() -> None:
    """Claimed, and its send queue record kept failing until SQS moved it to the DLQ (a broken sender): it is no
    longer in the `due` index for the dispatcher to expire, so the family's follow-up must not wait on it."""
    stuck = reminder("1_day_reminder", "queued")
    assert judge([stuck], None, OVERDUE, "2027-03-16T09:00:00.000Z").action == "wait"  # its deadline is open
    verdict = judge([stuck], None, OVERDUE, AFTER)
    assert verdict.action == "call"
    assert verdict.reasons == (
        "1 day before: not sent before its deadline, its send queue record kept failing (in the send DLQ)",
    )


def test_judge_a_delivery_reaches_an_unconfirmed_send_stops_watching() -> None:
    verdict = judge([reminder("1_day_reminder", "delivered", delivered_at=NOW)], None, OVERDUE, AFTER)
    assert (verdict.action, verdict.reminder_type) == ("reached", "1_day_reminder")
    unconfirmed = reminder("overdue_reminder", "sent", sent_at="2027-03-13T14:00:00.000Z")
    assert judge([unconfirmed], None, OVERDUE, AFTER).action == "stop"


def test_judge_calls_with_the_reasons_in_words() -> None:
    messages = [
        reminder("7_day_reminder", "failed", receipt_status="DeliveryImpossible"),
        reminder("1_day_reminder", "expired", last_error="superseded: the 1-day reminder is near"),
        reminder("overdue_reminder", "failed", last_error="SVC0004: invalid address"),
    ]
    verdict = judge(messages, None, OVERDUE, AFTER)
    assert verdict.action == "call"
    assert verdict.reasons == (
        "7 days before: undeliverable, the phone could not be reached (DeliveryImpossible)",
        "1 day after: refused by the SMS provider (SVC0004: invalid address)",
    )
    opted_out = reminder("1_day_reminder", "cancelled", last_error="cancelled: opted out")
    assert judge([opted_out], None, OVERDUE, AFTER).reasons == ("1 day before: not sent, the family opted out of SMS",)
    expired = reminder("overdue_reminder", "expired", last_error="dead letter not redriven before its deadline (x)")
    assert judge([expired], None, OVERDUE, AFTER).reasons == (
        "1 day after: sending kept failing (dead letter not redriven before its deadline (x))",
    )
    assert judge([], "the family opted out of SMS", OVERDUE, AFTER).reasons == (
        "no reminder: the family opted out of SMS",
    )


def test_judge_a_stop_sets_a_backstop_24_hours_after_the_last_send_then_lets_go() -> None:
    """Review item 2: a reminder accepted with no receipt yet is looked at again 24 h after the last send (a lost
    re-arm, a receipt that never comes); past that backstop, still with no receipt, the pass stops watching."""
    sent = [
        reminder("1_day_reminder", "sent", sent_at="2027-03-11T09:00:00.000Z"),
        reminder("overdue_reminder", "sent", sent_at="2027-03-13T14:00:00.000Z"),
    ]
    verdict = judge(sent, None, OVERDUE, "2027-03-13T15:00:00.000Z")
    assert (verdict.action, verdict.until) == ("stop", "2027-03-14T14:00:00.000Z")
    assert (judge(sent, None, OVERDUE, "2027-03-14T14:00:00.000Z").until) is None


def test_judge_calls_a_family_whose_only_sends_went_unanswered_and_unconfirmed_past_the_backstop() -> None:
    """A hung provider (it takes connections, never answers) made every request ambiguous, recorded sent under the
    default policy: no receipt ever came. Past the backstop the family was left as if reached; it is called. One
    send the provider did accept, even without a receipt, still lets it go."""
    unanswered = [
        reminder("1_day_reminder", "sent", sent_at="2027-03-11T09:00:00.000Z", ambiguous=True),
        reminder("overdue_reminder", "sent", sent_at="2027-03-13T14:00:00.000Z", ambiguous=True),
    ]
    assert judge(unanswered, None, OVERDUE, "2027-03-13T15:00:00.000Z").action == "stop"
    verdict = judge(unanswered, None, OVERDUE, "2027-03-14T14:00:00.000Z")
    assert verdict.action == "call"
    assert verdict.reasons == (
        "1 day before: the SMS provider never answered its request, and no receipt came",
        "1 day after: the SMS provider never answered its request, and no receipt came",
    )
    accepted = reminder("7_day_reminder", "sent", sent_at="2027-03-05T09:00:00.000Z")
    assert judge([accepted, *unanswered], None, OVERDUE, "2027-03-14T14:00:00.000Z").action == "stop"


def test_judge_a_dead_letter_past_its_deadline_has_ended() -> None:
    """Review item 3: a dead letter waits only until its deadline. Past it, one that was never sent has ended (not
    delivered: a reason to call); an ambiguous one (its text kept: it may have gone out) is a stop with the backstop,
    24 h after its deadline, instead of a wait written again at every dispatcher run."""
    deadline = "2027-03-16T10:00:00.000Z"
    plain = reminder("overdue_reminder", "dead_letter", last_error="re-claimed too often")
    assert judge([plain], None, OVERDUE, "2027-03-16T09:00:00.000Z") == Verdict("wait", until=deadline)
    verdict = judge([plain], None, OVERDUE, deadline)
    assert (verdict.action, verdict.reasons) == ("call", ("1 day after: sending kept failing (re-claimed too often)",))
    ambiguous = reminder("overdue_reminder", "dead_letter", text="Rappel ...", last_error="ambiguous send: timeout")
    assert judge([ambiguous], None, OVERDUE, AFTER) == Verdict("stop", until="2027-03-17T10:00:00.000Z")
    assert judge([ambiguous], None, OVERDUE, "2027-03-17T10:00:00.000Z") == Verdict("stop")


def test_may_rearm_only_a_scheduled_overdue_dose_whose_family_is_neither_reached_nor_followed_up() -> None:
    from core.outcomes import may_rearm

    watched = AppointmentState("a1", status="scheduled", overdue_at="2027-03-21T00:00:00Z")
    assert may_rearm(watched, "2027-03-21T00:00:00Z")
    assert not may_rearm(watched, "2027-03-20T23:59:59Z")  # not overdue yet: the pass looks at it then anyway
    assert not may_rearm(replace(watched, status="administered"), "2027-03-22T00:00:00Z")
    assert not may_rearm(replace(watched, reached_type="1_day_reminder"), "2027-03-22T00:00:00Z")
    assert not may_rearm(replace(watched, follow_up="open"), "2027-03-22T00:00:00Z")
    assert may_rearm(None, "2027-03-22T00:00:00Z")  # no state in hand: only the write can tell


# ---------------------------------------------------------------------------------------------- found unpinned


def test_a_follow_up_closed_because_the_family_was_reached_stays_closed_once_announced() -> None:
    """Only a dose due again with its family not reached opens a new episode; a late receipt's close is final."""
    reached = AppointmentState(
        "a1",
        status="scheduled",
        due_date=DUE,
        reached_type="1_day_reminder",
        follow_up="closed",
        follow_up_at=OVERDUE,
        closed_at=AFTER,
    )
    announced = published(reached, "closed")
    assert (announced.follow_up, announced.episode, announced.closed_published) == ("closed", 0, True)


def test_a_state_without_its_schedule_counts_nowhere_and_takes_any_reminder() -> None:
    unknown = AppointmentState("a1", status="scheduled")
    assert contribution(unknown) == {}
    assert about_this_dose(unknown, "2027-03-15", "p1")
    assert not about_this_dose(replace(unknown, due_date=DUE), "2027-03-15", "p1")


def test_judge_credits_the_first_delivery_not_the_last() -> None:
    first = reminder("7_day_reminder", "delivered", delivered_at="2027-03-08T08:00:00.000Z")
    later = reminder("1_day_reminder", "delivered", delivered_at="2027-03-05T08:00:00.000Z")
    assert judge([first, later], None, OVERDUE, AFTER).reminder_type == "1_day_reminder"


def test_judge_names_an_smsc_rejection_undeliverable() -> None:
    rejected = reminder("1_day_reminder", "failed", receipt_status="RejectedBySmsc")
    assert judge([rejected], None, OVERDUE, AFTER).reasons == (
        "1 day before: undeliverable, the phone could not be reached (RejectedBySmsc)",
    )
