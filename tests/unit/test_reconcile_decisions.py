"""`planning.decide`: what reconciliation does to each reminder of an appointment, as a pure function (no moto)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.lifecycle import Status
from core.planning import Move, WantedReminder, decide
from core.store import MessageRecord, iso

pytestmark = pytest.mark.unit

AT = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)
WANTED = WantedReminder("7_day_reminder", AT, AT + timedelta(hours=48))


def message(status: Status, *, scheduled_at: datetime = AT, recipient: str = "r1") -> MessageRecord:
    return MessageRecord(
        "m1",
        status=status.value,
        scheduled_at=iso(scheduled_at),
        deadline=iso(scheduled_at + timedelta(hours=48)),
        recipient=recipient,
    )


def test_a_wanted_reminder_that_does_not_exist_is_created() -> None:
    assert decide({}, {"m1": WANTED}, "r1", AT) == [(Move.CREATE, "m1")]


def test_an_unchanged_pending_reminder_is_left_alone() -> None:
    assert decide({"m1": message(Status.PENDING)}, {"m1": WANTED}, "r1", AT) == []


@pytest.mark.parametrize(
    "changed", [{"scheduled_at": AT + timedelta(hours=1)}, {"recipient": "r2"}], ids=["schedule", "phone"]
)
def test_a_pending_reminder_whose_schedule_or_phone_changed_is_replanned(changed: dict[str, object]) -> None:
    assert decide({"m1": message(Status.PENDING, **changed)}, {"m1": WANTED}, "r1", AT) == [(Move.REPLAN, "m1")]  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [Status.PENDING, Status.QUEUED, Status.DEAD_LETTER])
def test_an_outstanding_reminder_no_longer_wanted_is_cancelled(status: Status) -> None:
    assert decide({"m1": message(status)}, {}, "r1", AT) == [(Move.CANCEL, "m1")]


def test_a_cancelled_reminder_wanted_again_is_revived_and_not_created_twice() -> None:
    assert decide({"m1": message(Status.CANCELLED)}, {"m1": WANTED}, "r1", AT) == [(Move.REVIVE, "m1")]


@pytest.mark.parametrize("status", [Status.SENT, Status.DELIVERED, Status.FAILED, Status.EXPIRED])
def test_a_settled_reminder_is_never_touched_wanted_or_not(status: Status) -> None:
    assert decide({"m1": message(status)}, {"m1": WANTED}, "r1", AT) == []
    assert decide({"m1": message(status)}, {}, "r1", AT) == []


def test_a_queued_reminder_still_wanted_is_left_to_the_sender() -> None:
    assert decide({"m1": message(Status.QUEUED, recipient="r2")}, {"m1": WANTED}, "r1", AT) == []


LATE = WANTED.deadline  # the deadline has come


def test_a_reminder_whose_deadline_has_passed_is_not_created_but_one_still_before_it_is() -> None:
    assert decide({}, {"m1": WANTED}, "r1", LATE) == []
    assert decide({}, {"m1": WANTED}, "r1", LATE - timedelta(minutes=1)) == [(Move.CREATE, "m1")]


@pytest.mark.parametrize("status", [Status.PENDING, Status.QUEUED, Status.DEAD_LETTER])
def test_an_outstanding_reminder_past_its_deadline_is_not_taken_for_one_no_longer_wanted(status: Status) -> None:
    """A name corrected after the deadline must not cancel it as "rescheduled": an ambiguous dead letter waits for an
    operator (its SMS may have gone out), and the dispatcher expires the others."""
    moved = message(status, scheduled_at=AT + timedelta(hours=1))  # its schedule differs: no replan either
    assert decide({"m1": moved}, {"m1": WANTED}, "r1", LATE) == []


def test_a_cancelled_reminder_past_its_deadline_is_not_revived() -> None:
    assert decide({"m1": message(Status.CANCELLED)}, {"m1": WANTED}, "r1", LATE) == []
