"""The audit trail (issue 14, item 1): each message's history of status changes, written by the change itself.

The `check_*` functions take bound settings and run on moto here and on AWS's DynamoDB Local in
tests/contract/test_history_on_dynamodb_local.py: the bounded append is an update expression moto could accept
and DynamoDB refuse.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import botocore.client
import pytest
from typer.testing import CliRunner

from core import clock, store
from core.lifecycle import Status
from core.planning import handle_clinic_event
from core.settings import Settings
from core.store import HISTORY_LIMIT, REASON_MAX_CHARS, Change, Guard, MessageRecord, iso
from tests.helpers import dose, patient

pytestmark = pytest.mark.integration

CLAIM = Change(Status.QUEUED, frozenset({Status.PENDING}), {}, Guard.VERSION, reason="claimed")
BACK = Change(Status.PENDING, frozenset({Status.QUEUED}), {"last_error": "quiet hours"}, Guard.VERSION)
CANCEL = Change(Status.CANCELLED, frozenset({Status.PENDING, Status.QUEUED}), {"last_error": "cancelled: opted out"})
REVIVE = Change(Status.PENDING, frozenset({Status.CANCELLED}), {}, Guard.NEVER_SENT, reason="revived: opted in")


def planned(settings: Settings) -> MessageRecord:
    """p1's 7-day reminder, just planned."""
    handle_clinic_event(patient(), settings)
    handle_clinic_event(dose(), settings)
    (message,) = [m for m in store.messages_of_patient("p1") if m.reminder_type == "7_day_reminder"]
    return message


def move(message_id: str, change: Change, settings: Settings, *, at: datetime | None = None) -> MessageRecord:
    """Apply `change` to the message as stored now; it must apply. Returns the message as stored after it."""
    current = store.get_message(message_id)
    assert current is not None
    assert store.transition(current, change, at=at or clock.now(), settings=settings)
    after = store.get_message(message_id)
    assert after is not None
    return after


def assert_chained(history: list[dict[str, Any]], status: str) -> None:
    """Each entry starts where the one before it ended, in time order, and the last ends at the status."""
    assert history[-1]["to"] == status
    for before, after in itertools.pairwise(history):
        assert after["from"] == before["to"], history
        assert after["at"] >= before["at"], history


def check_creation_is_the_first_entry(settings: Settings) -> None:
    message = planned(settings)
    assert store.history_of(message) == [{"at": iso(clock.now()), "from": None, "to": "pending", "reason": "planned"}]
    after = move(message.message_id, CLAIM, settings)
    assert store.history_of(after)[1:] == [
        {"at": iso(clock.now()), "from": "pending", "to": "queued", "reason": "claimed"}
    ]
    after = move(message.message_id, BACK, settings)
    assert store.history_of(after)[-1]["reason"] == "quiet hours"  # no reason given: the last_error it sets
    assert_chained(store.history_of(after), "pending")


def check_the_history_keeps_the_last_entries(settings: Settings) -> None:
    """31 status changes (the creation and 30 more, version-guarded): the last 20 are kept, oldest first."""
    message = planned(settings)
    start = clock.now()
    for n in range(15):
        move(message.message_id, CLAIM, settings, at=start + timedelta(minutes=2 * n))
        after = move(message.message_id, BACK, settings, at=start + timedelta(minutes=2 * n + 1))
    history = store.history_of(after)
    assert len(history) == HISTORY_LIMIT
    # Dropped: the creation and the changes of minutes 0 to 9; kept: those of minutes 10 to 29.
    assert history[0]["at"] == iso(start + timedelta(minutes=10)) and history[0]["to"] == "queued"
    assert history[-1]["at"] == iso(start + timedelta(minutes=29))
    assert_chained(history, "pending")


def check_changes_without_a_version_guard_keep_the_bound(settings: Settings) -> None:
    """A cancellation has no version guard and a revival only NEVER_SENT: at the bound they drop the oldest too."""
    message = planned(settings)
    for _ in range(HISTORY_LIMIT):
        move(message.message_id, CLAIM, settings)
        move(message.message_id, BACK, settings)
    for _ in range(5):
        assert len(store.history_of(move(message.message_id, CANCEL, settings))) == HISTORY_LIMIT
        after = move(message.message_id, REVIVE, settings)
        assert len(store.history_of(after)) == HISTORY_LIMIT
    assert [e["reason"] for e in store.history_of(after)[-2:]] == ["cancelled: opted out", "revived: opted in"]
    assert_chained(store.history_of(after), "pending")


def check_a_concurrent_change_never_fails_because_of_the_history(settings: Settings) -> None:
    """Two writers read the message once; both changes apply as they would without a history, each with its entry,
    below and at the bound; a change whose condition fails leaves no entry."""
    message = planned(settings)
    stale = store.get_message(message.message_id)
    assert stale is not None
    assert store.transition(stale, CANCEL, at=clock.now(), settings=settings)  # one writer
    assert store.transition(stale, REVIVE, at=clock.now(), settings=settings)  # the other, from the same read
    assert not store.transition(stale, CLAIM, at=clock.now(), settings=settings)  # its version moved: refused
    history = store.history_of(store.get_message(message.message_id))  # type: ignore[arg-type]
    assert [(e["from"], e["to"]) for e in history] == [
        (None, "pending"),
        ("pending", "cancelled"),
        ("cancelled", "pending"),
    ]
    while len(history) < HISTORY_LIMIT:
        history = store.history_of(move(message.message_id, CANCEL, settings))
        history = store.history_of(move(message.message_id, REVIVE, settings))
    stale = store.get_message(message.message_id)
    assert stale is not None and len(stale.history or []) == HISTORY_LIMIT
    assert store.transition(stale, CANCEL, at=clock.now(), settings=settings)
    assert store.transition(stale, REVIVE, at=clock.now(), settings=settings)  # trims from the stale count: still 20
    current = store.get_message(message.message_id)
    assert current is not None and len(current.history or []) == HISTORY_LIMIT
    assert_chained(store.history_of(current), "pending")


def check_a_message_without_history_starts_one(settings: Settings) -> None:
    """A message stored before the audit trail existed: its next change starts its history."""
    message = planned(settings)
    MessageRecord(message.message_id).update(actions=[MessageRecord.history.remove()])
    legacy = store.get_message(message.message_id)
    assert legacy is not None and legacy.history is None
    assert store.transition(legacy, CLAIM, at=clock.now(), settings=settings)
    after = store.get_message(message.message_id)
    assert after is not None
    assert store.history_of(after) == [{"at": iso(clock.now()), "from": "pending", "to": "queued", "reason": "claimed"}]


def check_a_long_reason_is_cut(settings: Settings) -> None:
    message = planned(settings)
    error = "HTTP 503: " + "the gateway said a great deal " * 10
    after = move(
        message.message_id, Change(Status.CANCELLED, frozenset({Status.PENDING}), {"last_error": error}), settings
    )
    reason = store.history_of(after)[-1]["reason"]
    assert reason is not None and len(reason) == REASON_MAX_CHARS and reason.endswith("…")
    assert after.last_error == error  # the message's own field keeps it whole


CHECKS = [
    check_creation_is_the_first_entry,
    check_the_history_keeps_the_last_entries,
    check_changes_without_a_version_guard_keep_the_bound,
    check_a_concurrent_change_never_fails_because_of_the_history,
    check_a_message_without_history_starts_one,
    check_a_long_reason_is_cut,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_history_on_moto(aws: Any, check: Any) -> None:
    check(aws.settings)


@pytest.fixture
def message_writes(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The DynamoDB write operations made on the messages table."""
    made: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if params.get("TableName") == aws.settings.MESSAGES_TABLE and operation not in {"GetItem", "Query", "Scan"}:
            made.append(operation)
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    yield made


def test_a_status_change_and_its_entry_are_one_write(aws: Any, message_writes: list[str]) -> None:
    message = planned(aws.settings)
    assert message_writes.count("PutItem") == 3  # the three reminders, each created with its first entry
    message_writes.clear()
    move(message.message_id, CLAIM, aws.settings)
    move(message.message_id, BACK, aws.settings)
    assert message_writes == ["UpdateItem", "UpdateItem"]


def test_rappel_messages_id_prints_the_message_and_its_history(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rappel_cli import cli

    monkeypatch.setattr(cli, "resolve", lambda **_: aws.settings)
    message = planned(aws.settings)
    move(message.message_id, CLAIM, aws.settings)
    move(message.message_id, CANCEL, aws.settings)
    runner = CliRunner()

    shown = runner.invoke(cli.app, ["messages", "--id", message.message_id], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert f"Message {message.message_id}" in shown.output and "7_day_reminder" in shown.output
    assert "History (3 status changes, oldest first)" in shown.output
    rows = [line for line in shown.output.splitlines() if "2027-03-01T08:00:00.000Z" in line and "│" in line]
    cells = [[cell.strip() for cell in row.strip("│ ").split("│")] for row in rows]
    assert ["2027-03-01T08:00:00.000Z", "-", "pending", "planned"] in cells
    assert ["2027-03-01T08:00:00.000Z", "queued", "cancelled", "cancelled: opted out"] in cells

    as_json = runner.invoke(cli.app, ["messages", "--id", message.message_id, "--json"])
    data = json.loads(as_json.output)
    assert data["status"] == "cancelled" and data["last_error"] == "cancelled: opted out"
    assert [(e["from"], e["to"], e["reason"]) for e in data["history"]] == [
        (None, "pending", "planned"),
        ("pending", "queued", "claimed"),
        ("queued", "cancelled", "cancelled: opted out"),
    ]

    missing = runner.invoke(cli.app, ["messages", "--id", "msg_nope"])
    assert missing.exit_code == 1 and "no message msg_nope" in missing.output
