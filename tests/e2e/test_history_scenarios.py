"""The audit trail through `rappel simulate` (issue 14, item 1): `messages[].history`, oldest first, for a delivered
reminder, a retried one and a revived one, in the words health workers read; every message's history chained and
ending at its status, in these runs and in the shipped dose_given scenario."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.e2e.test_scenarios import (
    assert_invariants,
    by_type,
    describe,
    dose_given_scenario,
    one_patient,
    patient_event,
    phone,
    run,
    scenario,
)

pytestmark = pytest.mark.e2e

DUE = "2027-03-12"  # the 7-day reminder is due 2027-03-05 09:00 (Abidjan, UTC+0)


def moves(message: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    return [(e["from"], e["to"], e["reason"]) for e in message["history"]]


def assert_histories_hold(out: dict[str, Any]) -> None:
    """Each message's history starts with its creation (unless trimmed), chains, keeps time order, ends at its
    status, and is at most 20 entries."""
    for m in out["messages"]:
        history = m["history"]
        assert 1 <= len(history) <= 20, describe(out)
        assert history[-1]["to"] == m["status"], (m["message_id"], history)
        if len(history) < 20:
            assert (history[0]["from"], history[0]["to"]) == (None, "pending"), history
        for before, after in itertools.pairwise(history):
            assert after["from"] == before["to"] and after["at"] >= before["at"], history
        assert all(e["reason"] and len(e["reason"]) <= 120 for e in history), history


def test_a_delivered_reminder_reads_planned_claimed_sent_delivered() -> None:
    sc = scenario("2027-03-01T08:00:00Z", "2027-03-06T00:00:00Z", one_patient(DUE))
    out = run(sc)
    assert_invariants(out, sc)
    reminder = by_type(out, "a1")["7_day_reminder"]
    assert reminder["status"] == "delivered" and reminder["last_error"] is None
    assert moves(reminder) == [
        (None, "pending", "planned"),
        ("pending", "queued", "claimed"),
        ("queued", "sent", "sent via orange"),
        ("sent", "delivered", "delivered (receipt DeliveredToTerminal)"),
    ]
    at = [e["at"] for e in reminder["history"]]
    assert at[0] == "2027-03-01T08:00:00.000Z" and at[1] == "2027-03-05T09:00:00.000Z"
    assert at[2] == reminder["sent_at"] and at[3] == reminder["delivered_at"]
    assert_histories_hold(out)


def test_a_retried_reminder_says_why_it_went_back_to_pending() -> None:
    sc = scenario("2027-03-01T08:00:00Z", "2027-03-06T00:00:00Z", one_patient(DUE), faults=[{"status": 503, "nth": 1}])
    out = run(sc)
    assert_invariants(out, sc)
    reminder = by_type(out, "a1")["7_day_reminder"]
    assert reminder["status"] == "delivered" and reminder["attempts"] == 2, describe(out)
    history = moves(reminder)
    assert [(source, target) for source, target, _ in history] == [
        (None, "pending"),
        ("pending", "queued"),
        ("queued", "pending"),
        ("pending", "queued"),
        ("queued", "sent"),
        ("sent", "delivered"),
    ]
    retry = history[2][2]
    assert retry.startswith("retry after ") and "503" in retry, retry
    assert history[4][2] == "sent via orange"
    assert reminder["history"][3]["at"] > reminder["history"][2]["at"]  # claimed again after the backoff
    assert_histories_hold(out)


def test_a_revived_reminder_shows_its_cancellation_and_its_return() -> None:
    events = [
        *one_patient(DUE),
        patient_event("2027-03-02T08:00:00Z", "p1", phone(1), opt_in=False),
        patient_event("2027-03-03T08:00:00Z", "p1", phone(1), opt_in=True),
    ]
    sc = scenario("2027-03-01T08:00:00Z", "2027-03-06T00:00:00Z", events)
    out = run(sc)
    assert_invariants(out, sc)
    reminder = by_type(out, "a1")["7_day_reminder"]
    assert reminder["status"] == "delivered" and reminder["revived"], describe(out)
    assert moves(reminder) == [
        (None, "pending", "planned"),
        ("pending", "cancelled", "cancelled: opted out"),
        ("cancelled", "pending", "revived: opted out no longer holds"),
        ("pending", "queued", "claimed"),
        ("queued", "sent", "sent via orange"),
        ("sent", "delivered", "delivered (receipt DeliveredToTerminal)"),
    ]
    assert [e["at"][:10] for e in reminder["history"][1:3]] == ["2027-03-02", "2027-03-03"]
    assert_histories_hold(out)


def test_every_history_in_the_dose_given_scenario_holds() -> None:
    sc = dose_given_scenario()
    out = run(sc)
    assert_histories_hold(out)
    cancelled = [m for m in out["messages"] if m["status"] == "cancelled"]
    assert cancelled, describe(out)
    assert all(m["history"][-1]["reason"] == m["last_error"] for m in cancelled)
