"""The live counts health and statistics read from the `due` index behave the same on AWS's DynamoDB Local."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from core import store
from core.settings import build_settings
from rappel_local.stack import LocalStack, create_stack

pytestmark = pytest.mark.contract


@pytest.fixture
def ddb_stack(dynamodb_local_endpoint: str) -> Iterator[LocalStack]:
    stack = create_stack(
        prefix=f"c{uuid.uuid4().hex[:8]}", endpoint_url=dynamodb_local_endpoint, services=("dynamodb",)
    )
    store.bind(build_settings(**stack.environment(), DUE_INDEX_SHARDS=2))
    yield stack
    store.unbind()


def _put(
    client: Any, table: str, message_id: str, shard: str | None, due_at: str | None, status: str, reminder_type: str
) -> None:
    item = {"message_id": {"S": message_id}, "status": {"S": status}, "reminder_type": {"S": reminder_type}}
    if shard and due_at:
        item |= {"due_shard": {"S": shard}, "due_at": {"S": due_at}}
    client.put_item(TableName=table, Item=item)


def test_count_pending_and_pending_until(ddb_stack: LocalStack, dynamodb_local_client: Any) -> None:
    table = ddb_stack.messages_table
    _put(dynamodb_local_client, table, "m1", "DUE#0", "2027-03-13T09:00:00.000Z", "pending", "7_day_reminder")
    _put(dynamodb_local_client, table, "m2", "DUE#1", "2027-03-13T08:00:00.000Z", "pending", "7_day_reminder")
    _put(dynamodb_local_client, table, "m3", "DUE#1", "2027-03-13T07:00:00.000Z", "queued", "1_day_reminder")
    _put(dynamodb_local_client, table, "m4", "DUE#0", "2027-03-20T09:00:00.000Z", "pending", "overdue_reminder")
    _put(dynamodb_local_client, table, "m5", None, None, "sent", "7_day_reminder")  # not in the sparse index
    assert store.count_pending(2, datetime(2027, 3, 14, 0, 0, tzinfo=UTC)) == {"7_day_reminder": 2}
    assert store.count_pending(2, datetime(2027, 3, 21, 0, 0, tzinfo=UTC)) == {
        "7_day_reminder": 2,
        "overdue_reminder": 1,  # m3 is queued: on the send queue, not pending
    }
    due = [at for _, at in store.pending_until(2, datetime(2027, 3, 13, 10, 0, tzinfo=UTC))]
    assert (len(due), min(due)) == (2, datetime(2027, 3, 13, 8, 0, tzinfo=UTC))
    assert store.pending_until(2, datetime(2027, 3, 13, 7, 30, tzinfo=UTC)) == []


def test_undecided_dead_letters_are_counted_until_their_deadline(
    ddb_stack: LocalStack, dynamodb_local_client: Any
) -> None:
    table = ddb_stack.messages_table
    _put(dynamodb_local_client, table, "u1", "UNDECIDED", "2027-03-15T09:00:00.000Z", "dead_letter", "7_day_reminder")
    _put(dynamodb_local_client, table, "u2", "UNDECIDED", "2027-03-14T09:00:00.000Z", "dead_letter", "1_day_reminder")
    _put(dynamodb_local_client, table, "d1", "DUE#0", "2027-03-13T09:00:00.000Z", "dead_letter", "7_day_reminder")
    at = datetime(2027, 3, 13, 10, 0, tzinfo=UTC)
    assert store.undecided_dead_letters(at) == (2, datetime(2027, 3, 14, 9, 0, tzinfo=UTC))
    assert store.undecided_dead_letters(datetime(2027, 3, 14, 9, 0, tzinfo=UTC))[0] == 1  # past u2's deadline
    assert store.count_pending(2, at) == {}  # the dispatcher's shards hold no undecided one
