"""One SMS per phone per send slot: how the dispatcher groups claimed reminders, and the body that carries them."""

from __future__ import annotations

import json

import pytest

from core.dispatch import MAX_REMINDERS_PER_RECORD, by_phone
from core.queue import QueuedMessage, QueuedSms, parse_body
from core.store import MessageRecord

pytestmark = pytest.mark.unit


def test_the_dispatcher_groups_by_phone_type_and_due_date_and_caps_a_record() -> None:
    def claimed(
        n: int, recipient: str | None, reminder_type: str = "7_day_reminder"
    ) -> tuple[MessageRecord, QueuedMessage]:
        message = MessageRecord(f"m{n}", recipient=recipient, reminder_type=reminder_type, due_date="2027-03-12")
        return message, QueuedMessage(f"m{n}", 1)

    items = [claimed(1, "a"), claimed(2, "b"), claimed(3, "a"), claimed(4, "a", "1_day_reminder"), claimed(5, None)]
    items += [claimed(n, "c") for n in range(10, 10 + MAX_REMINDERS_PER_RECORD + 1)]
    records = by_phone(items)
    assert records[:4] == [
        QueuedSms((QueuedMessage("m1", 1), QueuedMessage("m3", 1))),
        QueuedMessage("m2", 1),
        QueuedMessage("m4", 1),
        QueuedMessage("m5", 1),
    ]
    assert [len(r.reminders) if isinstance(r, QueuedSms) else 1 for r in records[4:]] == [MAX_REMINDERS_PER_RECORD, 1]


def test_a_grouped_body_round_trips_and_a_single_body_stays_as_it_was() -> None:
    sms = QueuedSms((QueuedMessage("m1", 3), QueuedMessage("m2", 5)))
    assert parse_body(sms.body()) == sms.reminders
    assert parse_body(QueuedMessage("m1", 3).body()) == (QueuedMessage("m1", 3),)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reminders": []}, "body.reminders"),
        ({"reminders": "m1"}, "body.reminders"),
        ({"reminders": [{"message_id": "m1", "version": 1}] * 101}, "body.reminders"),
        ({"reminders": [{"message_id": "m1"}]}, "body.version"),
        ({"reminders": [{"message_id": "", "version": 1}]}, "body.message_id"),
    ],
)
def test_a_bad_grouped_body_is_refused_naming_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_body(json.dumps(body))
