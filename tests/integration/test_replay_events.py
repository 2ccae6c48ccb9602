"""`rappel replay-events`: the clinic events planning failed on, applied again from the planning dead letter queue
once the cause is fixed. Before it, the runbook asked for one `aws sqs receive-message`, a file, a `rappel invoke`
and an `aws sqs delete-message` per event: not a way through the thousands a campaign's outage leaves."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from core import store
from core.planning import handle_clinic_event
from tests.helpers import dose, patient

pytestmark = pytest.mark.integration


def _sqs() -> Any:
    return boto3.client("sqs", region_name="us-east-1")


def _queued(aws: Any, body: str) -> None:
    _sqs().send_message(QueueUrl=aws.settings.PLANNING_DEAD_LETTER_QUEUE_URL, MessageBody=body)


def _left(aws: Any) -> list[str]:
    messages = (
        _sqs()
        .receive_message(
            QueueUrl=aws.settings.PLANNING_DEAD_LETTER_QUEUE_URL, MaxNumberOfMessages=10, VisibilityTimeout=0
        )
        .get("Messages", [])
    )
    return [m["Body"] for m in messages]


def test_the_events_planning_failed_on_are_applied_again_and_what_cannot_be_is_left_with_the_reason(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rappel_cli import cli

    monkeypatch.setattr(cli, "resolve", lambda **_: aws.settings)
    handle_clinic_event(patient("p1"), aws.settings)
    copy = dose("a1", "p1", due_date="2027-03-20")  # EventBridge's copy: the event itself
    failure = {  # Lambda's failure record after its retries: the event in requestPayload
        "version": "1.0",
        "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": dose("a2", "p1", due_date="2027-03-27"),
        "responsePayload": {"errorType": "ProvisionedThroughputExceededException"},
    }
    refused = dose("a3", "p1", due_date="2027-13-01")
    for body in (copy, failure, refused):
        _queued(aws, json.dumps(body))
    _queued(aws, "not an event")

    shown = CliRunner().invoke(cli.app, ["replay-events", "--json"], env={"COLUMNS": "200"})

    assert shown.exit_code == 1, shown.output
    rows = {row.get("event_id"): row for row in json.loads(shown.output)}
    assert rows[copy["id"]]["result"] == rows[failure["requestPayload"]["id"]]["result"] == "applied"
    assert rows[refused["id"]]["result"] == "rejected" and "due_date" in rows[refused["id"]]["why"]
    assert rows[None] == {"result": "left", "why": "not a clinic event, nor Lambda's failure record of one"}
    assert store.get_appointment("a1") is not None and store.get_appointment("a2") is not None
    assert len(store.reminders_of("a1", ["2027-03-20"], ["p1"])) == 3
    assert _left(aws) == ["not an event"], "only what could not be applied stays, visible again"

    again = CliRunner().invoke(cli.app, ["replay-events", "--json"], env={"COLUMNS": "200"})
    assert [row["result"] for row in json.loads(again.output)] == ["left"]
