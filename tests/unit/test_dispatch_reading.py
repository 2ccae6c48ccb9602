"""How far the dispatcher reads a `due` shard when it holds messages this version cannot read (pure: the shard is
a generator standing in for the store's query)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from core import dispatch
from core.store import MessageRecord

NOW = datetime(2027, 3, 13, 9, tzinfo=UTC)


def test_messages_this_version_cannot_read_count_in_the_read_windows_and_are_logged_a_few_a_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After a rollback a shard may hold thousands in a newer version's status, never expired: read past the windows,
    every run paged through them all, one log line each, and timed out before it claimed anything."""
    read = 0

    def shard(name: str, until: datetime, page_size: int) -> Iterator[MessageRecord]:
        nonlocal read
        for k in range(20_000):
            read += 1
            yield MessageRecord(
                f"msg_{k}",
                status="held_by_a_newer_version",
                reminder_type="1_day_reminder",
                deadline="2027-03-14T09:00:00.000Z",
                scheduled_at="2027-03-13T08:00:00.000Z",
            )

    monkeypatch.setattr(dispatch.store, "due_in_shard", shard)
    unreadable: list[str] = []

    assert list(dispatch._candidates(1, NOW, 100, unreadable)) == []

    window = 100 + 50
    assert read == window * dispatch.DUE_READ_WINDOWS + 1  # the one past the last window ends the read
    assert len(unreadable) == window * dispatch.DUE_READ_WINDOWS
    logged = [r for r in caplog.records if r.getMessage() == "due message unreadable: left where it is"]
    assert len(logged) == dispatch.UNREADABLE_LOGGED


def _due(message_id: str, reminder_type: str, due_at: str) -> MessageRecord:
    return MessageRecord(message_id, status="pending", reminder_type=reminder_type, due_at=due_at)


def test_when_not_all_can_go_a_confirmation_then_1_day_then_overdue_then_7_day_each_longest_due_first() -> None:
    messages = [
        _due("seven", "7_day_reminder", "2027-03-13T07:00:00.000Z"),
        _due("overdue", "overdue_reminder", "2027-03-13T08:00:00.000Z"),
        _due("one_day_later", "1_day_reminder", "2027-03-13T08:30:00.000Z"),
        _due("one_day", "1_day_reminder", "2027-03-13T08:00:00.000Z"),
        _due("confirmation", "confirmation", "2027-03-13T08:59:00.000Z"),
    ]
    in_order = [m.message_id for m in dispatch.dispatch_order(messages, probing=False)]
    assert in_order == ["confirmation", "one_day", "one_day_later", "overdue", "seven"]
    probes = [m.message_id for m in dispatch.dispatch_order(messages, probing=True)]
    assert probes == ["seven", "overdue", "one_day", "one_day_later", "confirmation"]
