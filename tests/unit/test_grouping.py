"""One SMS per phone per send slot: how the dispatcher groups claimed reminders, and the body that carries them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.dispatch import MAX_REMINDERS_PER_RECORD, by_phone, within_capacity
from core.queue import QueuedMessage, QueuedSms, SendRecord
from core.store import MessageRecord
from rappel_local.embedded import sqs_event

pytestmark = pytest.mark.unit
QUEUE_ARN = "arn:aws:sqs:us-east-1:000000000000:rappel-send"


def test_the_dispatcher_groups_by_phone_whatever_the_type_and_due_date_and_caps_a_record() -> None:
    def claimed(
        n: int, recipient: str | None, reminder_type: str = "7_day_reminder", due_date: str = "2027-03-12"
    ) -> tuple[MessageRecord, QueuedMessage]:
        message = MessageRecord(f"m{n}", recipient=recipient, reminder_type=reminder_type, due_date=due_date)
        return message, QueuedMessage(f"m{n}", 1)

    items = [claimed(1, "a"), claimed(2, "b"), claimed(3, "a"), claimed(4, "a", "1_day_reminder", "2027-03-06")]
    items += [claimed(5, None), claimed(6, None)]
    items += [claimed(n, "c") for n in range(10, 10 + MAX_REMINDERS_PER_RECORD + 1)]
    records = by_phone(items)
    assert records[:4] == [
        QueuedSms((QueuedMessage("m1", 1), QueuedMessage("m3", 1), QueuedMessage("m4", 1))),
        QueuedMessage("m2", 1),
        QueuedMessage("m5", 1),
        QueuedMessage("m6", 1),
    ]
    assert [len(r.reminders) if isinstance(r, QueuedSms) else 1 for r in records[4:]] == [MAX_REMINDERS_PER_RECORD, 1]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.sampled_from(["7_day_reminder", "1_day_reminder"]))),
    st.integers(min_value=0, max_value=8),
)
def test_what_the_dispatcher_chooses_makes_at_most_its_capacity_in_records(
    reminders: list[tuple[str | None, str]], capacity: int
) -> None:
    """The capacity counts send records (SMS): the reminders chosen make at most that many records once grouped, and
    a reminder is left out only when taking it would make one more."""
    ordered = [
        MessageRecord(f"m{n}", recipient=recipient, reminder_type=kind, due_date="2027-03-12")
        for n, (recipient, kind) in enumerate(reminders)
    ]
    chosen = within_capacity(ordered, capacity, grouped=True)
    records = by_phone([(m, QueuedMessage(m.message_id, 1)) for m in chosen])
    assert len(records) <= capacity
    for left_out in (m for m in ordered if m not in chosen):
        more = by_phone([(m, QueuedMessage(m.message_id, 1)) for m in [*chosen, left_out]])
        assert len(more) > capacity


def _record(body: str) -> SendRecord:
    (raw,) = sqs_event([{"MessageId": "1", "ReceiptHandle": "r", "Body": body}], QUEUE_ARN)["Records"]
    return SendRecord.model_validate(raw)


def test_a_grouped_body_round_trips_and_a_single_body_stays_as_it_was() -> None:
    sms = QueuedSms((QueuedMessage("m1", 3), QueuedMessage("m2", 5)))
    assert _record(sms.body()).claims == sms.reminders
    assert _record(QueuedMessage("m1", 3).body()).claims == (QueuedMessage("m1", 3),)


def test_a_field_this_version_does_not_know_is_left_out_not_refused() -> None:
    """A newer dispatcher's record, read during a deploy or after a rollback: refused, its reminder would wait in the
    dead letter queue, out of the `due` index."""
    assert _record(json.dumps({"message_id": "m1", "version": 1, "priority": 2})).claims == (QueuedMessage("m1", 1),)
    grouped = {"reminders": [{"message_id": "m1", "version": 1, "lane": 0}], "priority": 2}
    assert _record(json.dumps(grouped)).claims == (QueuedMessage("m1", 1),)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reminders": []}, "reminders"),
        ({"reminders": "m1"}, "reminders"),
        ({"reminders": [{"message_id": "m1", "version": 1}] * 101}, "reminders"),
        ({"reminders": [{"message_id": "m1"}]}, "version"),
        ({"reminders": [{"message_id": "", "version": 1}]}, "message_id"),
        ({"message_id": "m1", "version": "1"}, "version"),
    ],
)
def test_a_bad_body_is_refused_naming_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        _record(json.dumps(body))
    assert any(field in (str(part) for part in error["loc"]) for error in refused.value.errors()), refused.value
