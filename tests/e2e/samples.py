"""Every function run once on its events/ sample, in the order a reminder's life calls them.

Shared by the built-artifact test (each function run from the build folder in an isolated interpreter) and the IAM
test (in-process, every AWS call recorded). The real clock decides what is due, so the samples' dates are moved
to today and the stack's environment must set a 7-day reminder time of 00:00 with quiet hours off.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from core.store import parse_iso
from rappel_cli.invoke import shift_dates
from rappel_local.change_streams import ChangeStreams

EVENTS = Path(__file__).parents[2] / "events"
PHONE = "+2250701020304"  # the samples' number
# The samples' dose is due on 2027-03-20 and dispatched on 2027-03-13; the runs move that day to today.
SAMPLE_DISPATCH_DAY = date(2027, 3, 13)
# What the stack's functions need in their environment besides the resources, for the samples to find work.
DUE_WHENEVER_THIS_RUNS = {"REMINDER_7_DAY_TIME": "00:00", "SMS_QUIET_HOURS_ENABLED": "false"}

Invoke = Callable[[str, dict[str, Any]], Any]


def shifted_event(name: str, days: int, **replacements: str) -> dict[str, Any]:
    """A sample event with its dates moved by `days` (as `rappel invoke --today` moves them), and placeholders
    replaced."""
    text = (EVENTS / name).read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    return dict(json.loads(shift_dates(text, days)))


def run_every_sample(invoke: Invoke, *, sqs: Any, dynamodb: Any, stack: Any, simulator: Any) -> None:
    """Plan, dispatch, send, settle by both receipt formats, check health and report, then cancel; each checked.

    `invoke(function, event)` returns the handler's response; `sqs` and `dynamodb` are clients on the stack.
    """
    days = (datetime.now(UTC).date() - SAMPLE_DISPATCH_DAY).days

    def status(message_id: str) -> str:
        item = dynamodb.get_item(TableName=stack.messages_table, Key={"message_id": {"S": message_id}})["Item"]
        return str(item["status"]["S"])

    assert invoke("plan_reminders", shifted_event("patient_upserted.json", days))["applied"] == 1
    assert invoke("plan_reminders", shifted_event("dose_scheduled.json", days))["created"] == 3
    assert invoke("dispatch_due", shifted_event("schedule_dispatch.json", days))["enqueued"] == 1

    received = sqs.receive_message(QueueUrl=stack.send_queue_url, MaxNumberOfMessages=10)["Messages"]
    assert len(received) == 1
    batch = shifted_event("sqs_send_batch.json", days)
    batch["Records"][0].update(
        messageId=received[0]["MessageId"],
        receiptHandle=received[0]["ReceiptHandle"],
        body=received[0]["Body"],
        eventSourceARN=stack.send_queue_arn,
    )
    assert invoke("send_sms", batch) == {"batchItemFailures": []}
    (accepted,) = simulator.accepted
    message_id = json.loads(received[0]["Body"])["message_id"]
    assert status(message_id) == "sent"

    receipt = shifted_event(
        "receipt_orange.json",
        days,
        REPLACE_WITH_RECEIPT_TOKEN=stack.receipt_token,
        REPLACE_WITH_PROVIDER_MESSAGE_ID=accepted.message_id,
    )
    assert invoke("delivery_receipt", receipt)["statusCode"] == 200
    assert status(message_id) == "delivered"
    kannel = shifted_event(
        "receipt_kannel.json",
        days,
        REPLACE_WITH_RECEIPT_TOKEN=stack.receipt_token,
        msg_373b3a9727cca03b6c580b26efaaf3c2=message_id,
    )
    # Orange took this one: a Kannel DLR naming it (the failover pair's other gateway) settles nothing.
    assert invoke("delivery_receipt", kannel)["body"] == "unknown"
    assert status(message_id) == "delivered"

    # The family was reached: the pass has no state whose time has come, and nothing fails.
    nothing = {"looked_at": 0, "opened": 0, "published": 0, "errors": 0, "out_of_time": False}
    assert invoke("follow_up_pass", shifted_event("schedule_follow_up_pass.json", days)) == nothing
    health = invoke("health_check", shifted_event("schedule_health.json", days))
    assert health["healthy"] is True and health["pending_count"] == 0  # 1-day, overdue: days away
    # The stream mappings hand the tables' changes to tally_changes, which keeps the counters the report reads.
    assert ChangeStreams(environment=stack.environment()).drain(invoke) > 0
    daily = invoke("daily_statistics", shifted_event("schedule_daily_statistics.json", days))
    # The report is the day before's (it runs at 04:00) and the real clock decides which day that is: the send and
    # its delivery, made now, are in it when it covers today (until noon UTC it is yesterday's). Counted where made.
    item = dynamodb.get_item(TableName=stack.messages_table, Key={"message_id": {"S": message_id}})["Item"]
    day = parse_iso(daily["window_start"])  # the local day it reports (APP_TIMEZONE is UTC+0 here)
    made = [parse_iso(item[name]["S"]) for name in ("sent_at", "delivered_at")]
    expected = [int(day <= at < day + timedelta(days=1)) for at in made]
    assert [daily["total"]["sent"], daily["total"]["delivered"]] == expected, (day, expected)
    tallied = invoke("tally_changes", shifted_event("stream_message_changes.json", days))
    assert (tallied["changes"], tallied["counted"]) == (1, 1)
    assert invoke("plan_reminders", shifted_event("dose_administered.json", days))["cancelled"] == 2
    # Stamped before the dose was given: an older event for the appointment, it changes nothing.
    assert invoke("plan_reminders", shifted_event("appointment_cancelled.json", days))["ignored"] == 1

    # The family replies STOP, then OUI (Kannel's sms-service): each change gets its confirmation, due now.
    def reply(text: str) -> str:
        sample = shifted_event("inbound_kannel.json", days, REPLACE_WITH_RECEIPT_TOKEN=stack.receipt_token)
        sample["rawQueryString"] = sample["rawQueryString"].replace("text=STOP", f"text={text}")
        sample["queryStringParameters"]["text"] = text
        response = invoke("delivery_receipt", sample)
        assert response["statusCode"] == 200, response
        return str(response["headers"]["X-Rappel-Reply"])

    assert reply("STOP") == "opted_out"
    assert reply("Bonjour") == "unknown_text"
    assert reply("OUI") == "opted_in"
