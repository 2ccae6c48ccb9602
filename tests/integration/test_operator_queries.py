"""What an operator's `rappel messages` finds: the filters a runbook names, and errors that name the option."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import store
from core.lifecycle import Status
from core.planning import handle_clinic_event
from core.store import Change, Guard
from rappel_cli.operations import list_messages
from rappel_local.orange_simulator import Fault
from tests.helpers import dose, patient

pytestmark = pytest.mark.integration

SEVEN_DAY = datetime(2027, 3, 13, 9, 0, tzinfo=UTC)  # the 7-day reminder of a dose due 2027-03-20, in Abidjan


def test_what_failed_lately_is_found_by_its_last_change_whenever_it_was_scheduled(aws: Any) -> None:
    """The failure-rate runbook: a reminder scheduled yesterday that failed this hour (a retried one, a backlog)."""
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(due_date="2027-03-20"), aws.settings)
    (message,) = [m for m in store.messages_of_patient("p1") if m.reminder_type == "7_day_reminder"]
    aws.clock.advance_to(SEVEN_DAY + timedelta(days=1))
    now = aws.clock.now()
    assert store.transition(
        message, Change(Status.QUEUED, frozenset({Status.PENDING}), {}, Guard.NONE), at=now, settings=aws.settings
    )
    failed = Change(Status.FAILED, frozenset({Status.QUEUED}), {}, Guard.NONE, reason="permanent 400")
    assert store.transition(store.get_message(message.message_id), failed, at=now, settings=aws.settings)
    hour_ago = (now - timedelta(hours=1)).isoformat()

    def found(since: str | None = None, changed_since: str | None = None) -> list[str]:
        rows = list_messages(
            aws.settings, status="failed", patient=None, since=since, limit=10, changed_since=changed_since
        )
        return [row["message_id"] for row in rows]

    assert found(changed_since=hour_ago) == [message.message_id]
    assert found(since=hour_ago) == []  # scheduled the day before
    assert found(changed_since=(now + timedelta(seconds=1)).isoformat()) == []


@pytest.mark.parametrize(
    ("filters", "option"),
    [
        ({"status": "bogus"}, "--status: 'bogus' is none of pending"),
        ({"since": "yesterday"}, "--since: not an ISO 8601 time"),
        ({"changed_since": "an hour ago"}, "--changed-since: not an ISO 8601 time"),
    ],
)
def test_a_bad_filter_is_refused_naming_its_option(aws: Any, filters: dict[str, str], option: str) -> None:
    arguments: dict[str, Any] = {"status": None, "patient": None, "since": None, "limit": 10, **filters}
    with pytest.raises(ValueError, match=option):
        list_messages(aws.settings, **arguments)


def test_a_manual_process_cycle_reports_what_became_of_the_reminders_it_sent(aws: Any, monkeypatch) -> None:
    """The spec's sms:process reports the cycle: processed, sent, failed, retried, dead-lettered and its time. The
    provider refusing every SMS for good (SVC0004), `rappel process --local` said `records_handled: 1,
    records_failed: 0`, which reads as a success."""
    from rappel_cli.operations import process_now
    from tests.integration.pipeline_kit import Pipeline

    pipe = Pipeline(aws, monkeypatch)
    pipe.start_orange(faults=[Fault(status=400, message_id="SVC0004")])
    try:
        for n in (1, 2):
            pipe.plan(n, "2027-03-20")
        pipe.clock.advance_to(datetime(2027, 3, 13, 9, 0, tzinfo=UTC))
        report = process_now(pipe.settings, drain=True)
    finally:
        pipe.close()
    assert report["reminders"] == {
        "processed": 2,
        "sent": 0,
        "failed": 2,
        "retried": 0,
        "dead_lettered": 0,
        "cancelled": 0,
        "expired": 0,
    }
    assert report["seconds"] >= 0
