"""tally_changes on moto's streams: counters follow the committed data, and a retried batch counts once."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import boto3
import botocore.client
import pytest
from typer.testing import CliRunner

from core import provider_state, store
from core.store import iso
from rappel_local.change_streams import stream_sources, streams_client
from rappel_local.embedded import invoke
from tests.helpers import dose, patient

pytestmark = pytest.mark.integration
MAX_RETRIES = stream_sources()[0].max_retries  # the template's MaximumRetryAttempts


def _planned(aws: Any) -> dict[str, float]:
    counters = store.read_counters(aws.clock.now().strftime("%Y-%m-%d"))
    return {key: value for key, value in counters.items() if key.endswith("#planned")}


def _plan_in_two_hours(aws: Any) -> None:
    invoke("plan_reminders", patient())
    invoke("plan_reminders", dose("a1", "p1", due_date="2027-03-20"))
    aws.clock.advance_to(aws.clock.now() + timedelta(hours=1))
    invoke("plan_reminders", dose("a2", "p1", due_date="2027-03-27"))


def test_the_counters_wait_for_the_tally_then_hold_what_the_data_says(aws: Any) -> None:
    _plan_in_two_hours(aws)
    assert _planned(aws) == {}
    assert aws.tally() > 0
    assert sorted(_planned(aws).values()) == [1.0] * 6  # three types in each of two hours
    assert {key.split("#")[0] for key in _planned(aws)} == {"08", "09"}


def test_the_same_batch_delivered_twice_counts_once(aws: Any) -> None:
    _plan_in_two_hours(aws)
    batches: list[dict[str, Any]] = []

    def keep(function: str, event: dict[str, Any]) -> Any:
        batches.append(event)
        return invoke(function, event)

    aws.change_streams.drain(keep)
    first = _planned(aws)
    again = [invoke("tally_changes", event) for event in batches]
    assert _planned(aws) == first
    assert sum(result["items_written"] for result in again) == 0
    assert sum(result["items_already_tallied"] for result in again) > 0


def test_a_batch_that_failed_part_way_is_retried_and_counts_once(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _plan_in_two_hours(aws)
    original = botocore.client.BaseClient._make_api_call
    counter_writes: list[str] = []

    def second_counter_write_fails_once(client: Any, operation: str, params: dict[str, Any]) -> Any:
        pk = (params.get("Key") or {}).get("pk", {}).get("S", "")
        if operation == "UpdateItem" and pk.startswith("COUNTERS#"):
            counter_writes.append(pk)
            if len(counter_writes) == 2:
                raise RuntimeError("the function timed out after its first counter write")
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", second_counter_write_fails_once)
    aws.tally()  # the messages' batch fails after reaching one of its two hour items
    reached = _planned(aws)
    assert sorted(reached.values()) == [1.0] * 3
    aws.tally()  # the same batch again: the hour it reached is not counted twice
    assert sorted(_planned(aws).values()) == [1.0] * 6
    assert len(counter_writes) == 4  # the failed one, then the two of the retry (one refused by its condition)


def test_the_last_send_moves_forward_only(aws: Any) -> None:
    """Two shards' batches can reach the tally in any order: an earlier send never takes the mark back."""
    later = aws.clock.now() + timedelta(minutes=10)
    provider_state.record_send(later)
    provider_state.record_send(later - timedelta(minutes=5))
    assert provider_state.last_send() == later
    provider_state.record_send(later + timedelta(seconds=1))
    assert provider_state.last_send() == later + timedelta(seconds=1)


def _failing_counter_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every counter write the tally makes fails (a broken deploy, a denied grant), until the test undoes it."""
    original = botocore.client.BaseClient._make_api_call

    def refused(client: Any, operation: str, params: dict[str, Any]) -> Any:
        pk = (params.get("Key") or {}).get("pk", {}).get("S", "")
        if operation == "UpdateItem" and pk.startswith(("COUNTERS", "OUTCOMES")):
            raise RuntimeError("AccessDeniedException")
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", refused)


def _shard_of(stream_arn: str) -> str:
    return str(streams_client().describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]["ShardId"])


def _failure_records(aws: Any) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name=aws.settings.AWS_REGION)
    url = aws.settings.TALLY_FAILURE_QUEUE_URL
    found = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
    return [json.loads(m["Body"]) for m in found]


def test_a_batch_given_up_after_its_retries_is_counted_by_rappel_retally(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MaximumRetryAttempts the mapping puts the batch's failure record on TallyFailureQueue and moves on;
    `rappel retally` reads the batch again from the stream and counts it, once."""
    from rappel_cli import cli

    invoke("plan_reminders", patient())
    invoke("plan_reminders", dose("a1", "p1", due_date="2027-03-20"))
    store.stop_number("+2250700000000", iso(aws.clock.now()), "STOP")  # in the ops stream, not for the tally
    invoke("plan_reminders", dose("a2", "p1", due_date="2027-03-27"))
    with monkeypatch.context() as broken:
        _failing_counter_writes(broken)
        for _ in range(MAX_RETRIES):  # the first invocation and its retries but the last
            aws.tally()
            assert _failure_records(aws) == []
        aws.tally()
        records = _failure_records(aws)

    assert {r["requestContext"]["condition"] for r in records} == {"RetryAttemptsExhausted"}
    assert {r["requestContext"]["approximateInvokeCount"] for r in records} == {MAX_RETRIES + 1}
    messages_stream = [
        r["DDBStreamBatchInfo"] for r in records if "MessagesTable" in r["DDBStreamBatchInfo"]["streamArn"]
    ]
    assert [info["batchSize"] for info in messages_stream] == [6]  # three reminders of each of two doses
    invoke("plan_reminders", dose("a3", "p1", due_date="2027-04-03"))
    aws.tally()  # the stream moved on: what came after the batch is counted
    assert sum(_planned(aws).values()) == 3

    monkeypatch.setattr(cli, "resolve", lambda **_: aws.settings)
    runner = CliRunner()
    shown = runner.invoke(cli.app, ["retally", "--json"])
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.output)  # the JSON alone: the tally's own log lines stay off the output
    assert {row["result"] for row in rows} == {"tallied"}
    # Each batch as Lambda got it: on the ops stream the outcome states, not the stop written between them (the
    # event's filter; unfiltered, the batch would not be the one its record describes, and would be left).
    assert sorted(row["changes"] for row in rows) == sorted(r["DDBStreamBatchInfo"]["batchSize"] for r in records)
    assert sum(_planned(aws).values()) == 9
    again = runner.invoke(cli.app, ["retally", "--json"])
    assert (again.exit_code, json.loads(again.output)) == (0, [])  # the failure records were deleted
    assert sum(_planned(aws).values()) == 9


def test_a_failure_record_whose_changes_left_the_stream_is_left_with_the_reason(aws: Any) -> None:
    from rappel_cli.operations import retally

    _plan_in_two_hours(aws)
    batches: list[dict[str, Any]] = []
    aws.change_streams.drain(lambda function, event: batches.append(event) or invoke(function, event))
    first = batches[0]["Records"]  # counted, then passed over: the mapping's reader drops what it has read
    info = {
        "shardId": _shard_of(first[0]["eventSourceARN"]),
        "startSequenceNumber": first[0]["dynamodb"]["SequenceNumber"],
        "endSequenceNumber": first[-1]["dynamodb"]["SequenceNumber"],
        "batchSize": len(first),
        "streamArn": first[0]["eventSourceARN"],
    }
    sqs = boto3.client("sqs", region_name=aws.settings.AWS_REGION)
    url = aws.settings.TALLY_FAILURE_QUEUE_URL
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"DDBStreamBatchInfo": info}))
    for _ in range(11):  # more than one receive's worth (10) of records that stay
        sqs.send_message(QueueUrl=url, MessageBody="{}")

    rows = retally(aws.settings)

    assert sorted({row["why"] for row in rows}) == [
        "not a DynamoDB stream failure record (DDBStreamBatchInfo)",
        "the stream no longer holds the batch's first change (it keeps 24 hours)",
    ]
    assert len(rows) == 12  # each record read once, all of them
    visible = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert visible["Attributes"]["ApproximateNumberOfMessages"] == "12"  # all left for an operator, visible

    # A batch the stream no longer holds can never be counted: its record kept TallyFailureQueueAlarm on for the
    # queue's 14 days. The operator drops it, knowingly; what is not a stream's failure record stays.
    dropped = retally(aws.settings, drop_gone=True)
    assert sorted(row["result"] for row in dropped) == ["dropped"] + ["left"] * 11
    gone = next(row for row in dropped if row["result"] == "dropped")
    assert gone["why"].startswith("the stream no longer holds") and gone["changes"] == len(first)
    visible = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert visible["Attributes"]["ApproximateNumberOfMessages"] == "11"


def test_rappel_retally_on_a_stack_without_the_queue_says_what_is_missing(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rappel_cli import cli

    older = aws.with_settings(TALLY_FAILURE_QUEUE_URL="")  # a stack deployed before the output existed
    monkeypatch.setattr(cli, "resolve", lambda **_: older)

    shown = CliRunner().invoke(cli.app, ["retally"], env={"COLUMNS": "200"})

    assert shown.exit_code == 2
    assert "TALLY_FAILURE_QUEUE_URL: not set" in shown.output
