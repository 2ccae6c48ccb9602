"""Families to call and did the reminders work, through `rappel simulate` (issue 14, items 2 and 3): the follow-ups
open at `until`, the FollowUpNeeded / FollowUpClosed events follow_up_pass published on the bus, and
`stats.outcomes`, on scenarios whose answers are worked out by hand below."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from core import notify
from tests.e2e.test_scenarios import (
    ABIDJAN,
    administered_event,
    assert_invariants,
    at_local,
    by_type,
    one_patient,
    phone,
    run,
    scenario,
    utc,
)

pytestmark = pytest.mark.e2e
DUE = "2027-03-12"


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every event core.notify put on the bus during the run (then put on moto's bus as usual)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    real = notify.publish

    def recording(detail_type: notify.DetailType, detail: Any, at: datetime, settings: Any) -> None:
        real(detail_type, detail, at, settings)
        seen.append((detail_type.value, dict(detail)))

    monkeypatch.setattr(notify, "publish", recording)
    yield seen


def follow_up_events(published: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(kind, detail["appointment_id"]) for kind, detail in published if kind.startswith("FollowUp")]


def test_an_undeliverable_family_never_vaccinated_gets_one_follow_up_a_reached_one_none(published) -> None:
    """p8's number takes the SMS but never delivers them (DeliveryImpossible): all three reminders fail, the last
    one (1 day after, 09:00 local on the 13th) about 20 s after it went out; the dose is overdue since the 13th at
    00:00, so the follow-up opens right after that last failure. p2, the control, is reached by its first reminder."""
    events = [*one_patient(DUE, number=8), *one_patient(DUE, number=2)]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-20T00:00:00Z", events, undeliverable=[phone(8)])
    out = run(data)
    assert_invariants(out, data)
    assert {m["status"] for m in by_type(out, "a8").values()} == {"failed"}
    assert {m["status"] for m in by_type(out, "a2").values()} == {"delivered"}

    (follow_up,) = out["follow_ups"]
    assert {k: follow_up[k] for k in ("patient_id", "appointment_id", "clinic")} == {
        "patient_id": "p8",
        "appointment_id": "a8",
        "clinic": "CSU Abobo",
    }
    assert follow_up["reasons"] == [
        f"{label}: undeliverable, the phone could not be reached (DeliveryImpossible)"
        for label in ("7 days before", "1 day before", "1 day after")
    ]
    last_sent = max(utc(m["sent_at"]) for m in by_type(out, "a8").values())  # its receipt fails it 20 s later
    opened = utc(follow_up["at"])
    pass_every = timedelta(minutes=15)  # FOLLOW_UP_PASS_MINUTES
    assert at_local("2027-03-13", 0, ABIDJAN) < last_sent < opened <= last_sent + pass_every, (
        "opened by the first follow-up pass after the last reminder's failure"
    )

    assert follow_up_events(published) == [("FollowUpNeeded", "a8")], "one event, for a8 alone"
    (needed,) = [d for k, d in published if k == "FollowUpNeeded"]
    assert needed["phone"] == "+225******08" and needed["follow_up_id"] == "followup-a8"
    assert needed["reasons"] == follow_up["reasons"] and needed["at"] == follow_up["at"]

    assert out["stats"]["outcomes"] == {
        "reached": {"appointments": 1, "given_by_due_date": 0, "given_later": 0, "not_given": 1},
        "not_reached": {"appointments": 1, "given_by_due_date": 0, "given_later": 0, "not_given": 1},
    }


def test_three_families_outcomes_by_hand_and_a_follow_up_closed_by_a_late_dose(published) -> None:
    """By hand:
    - p1 is reached by its 7-day reminder (the 5th) and vaccinated on the due date: reached, given by the due date;
    - p8's number is undeliverable: not reached; the follow-up opens on the 13th after its last reminder failed,
      and closes when the dose is given late, on the 15th (FollowUpClosed): not reached, given later;
    - p2 is reached and never comes: reached, not given; no follow-up (reached).
    """
    events = [
        *one_patient(DUE, number=1),
        *one_patient(DUE, number=8),
        *one_patient(DUE, number=2),
        administered_event("2027-03-12T10:00:00Z", "a1", DUE),
        administered_event("2027-03-15T11:00:00Z", "a8", "2027-03-15"),
    ]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-20T00:00:00Z", events, undeliverable=[phone(8)])
    out = run(data)
    assert_invariants(out, data)

    assert out["stats"]["outcomes"] == {
        "reached": {"appointments": 2, "given_by_due_date": 1, "given_later": 0, "not_given": 1},
        "not_reached": {"appointments": 1, "given_by_due_date": 0, "given_later": 1, "not_given": 0},
    }
    assert out["follow_ups"] == [], "a8's follow-up was closed by its late dose; a1 and a2 were reached"
    assert follow_up_events(published) == [("FollowUpNeeded", "a8"), ("FollowUpClosed", "a8")]
    closed = next(d for k, d in published if k == "FollowUpClosed")
    assert closed["why"] == "dose given" and closed["administered_on"] == "2027-03-15"
    assert closed["follow_up_id"] == "followup-a8"
    assert utc(closed["opened_at"]) < utc("2027-03-15T11:00:00Z") <= utc(closed["at"])
