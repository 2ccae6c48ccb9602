"""What the operator commands do, on top of core (shared by the CLI and `rappel local up`)."""

from __future__ import annotations

import heapq
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from pydantic import TypeAdapter

from core import clock, store
from core.dispatch import dispatch_due
from core.lifecycle import Status
from core.queue import ClaimBody, GroupedBody
from core.receipts import Route, route_url
from core.replies import get_url
from core.secrets import secret_text
from core.settings import Settings
from core.store import iso, parse_iso
from rappel_local.change_streams import BatchGone, lambda_records, read_range, stream_sources, streams_client
from rappel_local.embedded import invoke, sqs_event


def registered_urls(settings: Settings) -> dict[str, str]:
    """The URLs to give the gateways, each with its route's own token (never the receipt secret itself): the one to
    register with Orange for its receipts, and the `get-url` of Kannel's sms-service for the families' replies.
    ValueError when the target names no receipt URL."""
    if not settings.RECEIPT_BASE_URL:
        raise ValueError("the target names no receipt URL (the stack's ReceiptEndpoint output)")
    secret = secret_text(settings.RECEIPT_TOKEN_SECRET, settings)
    return {
        "orange_receipts": route_url(settings.RECEIPT_BASE_URL, Route.ORANGE, secret),
        "kannel_sms_service_get_url": get_url(settings.RECEIPT_BASE_URL, secret),
    }


def process_now(settings: Settings, *, drain: bool) -> dict[str, Any]:
    """One dispatcher run; on the embedded stack also drain the send queue through the send_sms handler and say what
    became of the reminders it carried (the spec's sms:process statistics), and how long the cycle took."""
    started = time.monotonic()
    result: dict[str, Any] = asdict(dispatch_due(settings))
    if drain:
        result.update(drain_send_queue(settings))
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


# What became of a reminder a cycle carried, by its status after it: the spec's SchedulerStats.
_CYCLE_OUTCOMES = {
    "sent": (Status.SENT, Status.DELIVERED),
    "failed": (Status.FAILED,),
    "retried": (Status.PENDING,),  # back to pending: a retry, or a deferral (quiet hours, a provider hold)
    "dead_lettered": (Status.DEAD_LETTER,),
    "cancelled": (Status.CANCELLED,),
    "expired": (Status.EXPIRED,),
}
_SEND_BODY: TypeAdapter[ClaimBody | GroupedBody] = TypeAdapter(ClaimBody | GroupedBody)


def cycle_outcomes(message_ids: list[str]) -> dict[str, int]:
    """How many of these reminders (those a cycle's records carried) were sent, failed, retried, … (read now)."""
    statuses = Counter(message.state for i in dict.fromkeys(message_ids) if (message := store.get_message(i)))
    counts = {name: sum(statuses[s] for s in ended) for name, ended in _CYCLE_OUTCOMES.items()}
    return {"processed": len(dict.fromkeys(message_ids)), **counts}


def drain_send_queue(settings: Settings, max_batches: int = 10_000) -> dict[str, Any]:
    """Deliver the send queue's messages to send_sms as Lambda's event source mapping would; with what became of
    the reminders they carried (`reminders`)."""
    sqs = boto3.client("sqs", region_name=settings.AWS_REGION, endpoint_url=settings.AWS_ENDPOINT_URL or None)
    arn = sqs.get_queue_attributes(QueueUrl=settings.SEND_QUEUE_URL, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    handled = failed = 0
    carried: list[str] = []
    for _ in range(max_batches):
        batch = sqs.receive_message(
            QueueUrl=settings.SEND_QUEUE_URL, MaxNumberOfMessages=10, VisibilityTimeout=720, AttributeNames=["All"]
        ).get("Messages", [])
        if not batch:
            break
        for message in batch:
            body = _SEND_BODY.validate_json(message["Body"])
            claims = body.claims if isinstance(body, GroupedBody) else (body.claim,)
            carried += [claim.message_id for claim in claims]
        try:
            response = invoke("send_sms", sqs_event(batch, arn)) or {}
            failures = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        except Exception:
            failures = {m["MessageId"] for m in batch}
        for message in batch:
            if message["MessageId"] not in failures:
                sqs.delete_message(QueueUrl=settings.SEND_QUEUE_URL, ReceiptHandle=message["ReceiptHandle"])
        handled += len(batch) - len(failures)
        failed += len(failures)
    store.bind(settings)
    return {"records_handled": handled, "records_failed": failed, "reminders": cycle_outcomes(carried)}


def list_messages(
    settings: Settings,
    *,
    status: str | None,
    patient: str | None,
    since: str | None,
    limit: int,
    changed_since: str | None = None,
) -> list[dict[str, Any]]:
    """Messages matching the filters, newest scheduled first: `since` on when they were scheduled, `changed_since`
    on their last status change (what failed this hour, whenever it was scheduled). ValueError names the option."""
    try:
        wanted = Status(status) if status else None
    except ValueError:
        raise ValueError(f"--status: {status!r} is none of {', '.join(s.value for s in Status)}") from None
    after = parse_instant(since, "--since") if since else None
    changed_after = parse_instant(changed_since, "--changed-since") if changed_since else None
    store.bind(settings)
    # Streamed, the newest `limit` kept as they come: the table holds every reminder planned, years ahead, and a list
    # of them all (1.5 KB each) did not fit a laptop's memory at a few million.
    items = store.messages_of_patient(patient) if patient else store.iterate_messages(wanted)
    rows = (_listed(item) for item in items if _matches(item, wanted, after, changed_after))
    return heapq.nlargest(limit, rows, key=lambda row: str(row["scheduled_at"]))


_LISTED = (
    "message_id",
    "patient_id",
    "appointment_id",
    "reminder_type",
    "due_date",
    "status",
    "scheduled_at",
    "deadline",
    "queued_at",
    "sent_at",
    "delivered_at",
    "attempts",
    "last_error",
    "provider_message_id",
    "segments",
    "text",
)


def _matches(
    item: store.MessageRecord, wanted: Status | None, after: datetime | None, changed_after: datetime | None
) -> bool:
    if wanted and item.status != wanted.value:
        return False
    if after and parse_iso(item.scheduled_at) < after:
        return False
    changed = store.last_change_at(item.attribute_values)
    return not changed_after or (changed is not None and changed >= changed_after)


def _listed(item: store.MessageRecord) -> dict[str, Any]:
    return {name: getattr(item, name) for name in _LISTED}


def parse_instant(text: str, option: str) -> datetime:
    """An ISO 8601 instant given to `option` (a time without a zone is UTC); ValueError naming the option."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option}: not an ISO 8601 time (e.g. 2027-03-01T08:00:00Z): {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def message_detail(settings: Settings, message_id: str) -> dict[str, Any] | None:
    """One message, every stored field but the `due` index's keys, with its history (oldest first); None if absent."""
    store.bind(settings)
    message = store.get_message(message_id)
    if message is None:
        return None
    first = ["message_id", "patient_id", "appointment_id", "reminder_type", "due_date", "status", "last_error"]
    rest = sorted(set(store.MessageRecord.get_attributes()) - {*first, "due_shard", "due_at", "history"})
    return {**{name: getattr(message, name) for name in first + rest}, "history": store.history_of(message)}


def cleanup_now(settings: Settings) -> dict[str, Any]:
    """Delete ended messages whose retention has run out, at once."""
    store.bind(settings)
    now = clock.now()
    deleted = store.delete_expired(now)
    return {
        "deleted": deleted,
        "retention_days": settings.SMS_RETENTION_DAYS,
        "ended_before": iso(now - timedelta(days=settings.SMS_RETENTION_DAYS)),
    }


def retally(settings: Settings, *, drop_gone: bool = False) -> list[dict[str, Any]]:
    """Count the statistics batches tally_changes gave up on (their failure records in TallyFailureQueue): read
    each batch again from its stream, run tally_changes on it as the event source mapping would have, and delete the
    failure record. One the stream no longer holds as its record describes it (it keeps 24 hours), or whose tally
    fails again, is left on the queue with the reason; with `drop_gone`, one whose batch has left the stream, which
    can never be counted, is deleted instead ("dropped"). Returns one row per failure record."""
    if not settings.TALLY_FAILURE_QUEUE_URL:
        raise ValueError("TALLY_FAILURE_QUEUE_URL: not set (the stack's TallyFailureQueueUrl output: redeploy)")
    endpoint = settings.AWS_ENDPOINT_URL or None
    streams = streams_client(endpoint, settings.AWS_REGION)
    patterns = {getattr(settings, s.table_variable): s.patterns for s in stream_sources()}

    def one(body: str) -> dict[str, Any]:
        row = _retally_one(body, streams, patterns)
        if row["result"] == "gone":  # its batch has left the stream: never to be counted
            row["result"] = "dropped" if drop_gone else "left"
        return row

    return _work_through(settings.TALLY_FAILURE_QUEUE_URL, settings, one)


def replay_clinic_events(settings: Settings) -> list[dict[str, Any]]:
    """Apply again the clinic events in the planning dead letter queue (once the cause is fixed): each runs through
    plan_reminders as Lambda would run it, with its original `time` (planning orders a clinic's changes by it), and
    its message is deleted. The queue holds EventBridge's copies (the event itself) and Lambda's failure records
    (the event in `requestPayload`). Planning is idempotent: an event applied already changes nothing. One that fails
    again, or is not a clinic event, is left on the queue with the reason; one planning refuses is deleted, with the
    errors it gave ("rejected"). Returns one row per message."""
    if not settings.PLANNING_DEAD_LETTER_QUEUE_URL:
        raise ValueError(
            "PLANNING_DEAD_LETTER_QUEUE_URL: not set (the stack's PlanningDeadLetterQueueUrl output: redeploy)"
        )
    return _work_through(settings.PLANNING_DEAD_LETTER_QUEUE_URL, settings, _replay_one)


def _replay_one(body: str) -> dict[str, Any]:
    try:
        message = json.loads(body)
        event = message.get("requestPayload", message)  # Lambda's failure record, or EventBridge's copy
        row: dict[str, Any] = {"event_id": str(event["id"]), "type": str(event["detail-type"]), "time": event["time"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {"result": "left", "why": "not a clinic event, nor Lambda's failure record of one"}
    try:
        result = invoke("plan_reminders", event) or {}
    except Exception as exc:  # the cause is not fixed yet: the message stays for the next run
        return {**row, "result": "left", "why": f"plan_reminders failed again: {type(exc).__name__}"}
    if result.get("rejected"):
        return {**row, "result": "rejected", "why": "; ".join(result.get("errors") or [])}
    return {**row, "result": "applied", "why": ""}


def _work_through(queue: str, settings: Settings, one: Callable[[str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every message of an operator's queue through `one` (its body to a row), once: deleted unless its row's result
    is "left". Those left are made visible again at the end; one that comes back sooner (a run longer than the
    receive's visibility) is not tried again in the same run."""
    sqs = boto3.client("sqs", region_name=settings.AWS_REGION, endpoint_url=settings.AWS_ENDPOINT_URL or None)
    rows: list[dict[str, Any]] = []
    done: set[str] = set()
    left: dict[str, str] = {}  # message id -> its latest receipt handle
    while True:
        # A long poll (one second) asks every SQS server: a short one may miss the one or two records there are.
        page = sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=300, WaitTimeSeconds=1
        ).get("Messages", [])
        if not page:
            break
        for message in page:
            message_id, handle = message["MessageId"], message["ReceiptHandle"]
            if message_id in done:  # SQS delivered a copy of one handled in this run
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=handle)
            elif message_id in left:
                left[message_id] = handle
            elif (row := one(message["Body"]))["result"] == "left":
                left[message_id] = handle
                rows.append(row)
            else:
                done.add(message_id)
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=handle)
                rows.append(row)
    for handle in left.values():  # back where the operator (and the queue's alarm) sees them
        sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=handle, VisibilityTimeout=0)
    return rows


def _retally_one(body: str, streams: Any, patterns: dict[str, Any]) -> dict[str, Any]:
    try:
        info = json.loads(body)["DDBStreamBatchInfo"]
        stream_arn, shard = str(info["streamArn"]), str(info["shardId"])
        first, last, size = str(info["startSequenceNumber"]), str(info["endSequenceNumber"]), int(info["batchSize"])
    except (ValueError, KeyError, TypeError):
        return {"result": "left", "why": "not a DynamoDB stream failure record (DDBStreamBatchInfo)"}
    row: dict[str, Any] = {"stream": stream_arn, "shard": shard, "first": first, "last": last, "changes": size}
    table = stream_arn.split("/")[1] if stream_arn.count("/") >= 3 else ""
    if table not in patterns:
        return {**row, "result": "left", "why": f"streamArn: not a stream tally_changes reads ({table or '?'})"}
    try:
        records = read_range(streams, stream_arn, shard, first, last)
    except BatchGone as gone:
        return {**row, "result": "gone", "why": str(gone)}
    batch = lambda_records(records, stream_arn, patterns[table])
    # Lambda's batchSize: the changes the function got (after the filter), or those read; either identifies it.
    if size not in {len(batch), len(records)}:
        why = f"batchSize: the record says {size}, the stream holds {len(batch)} such changes ({len(records)} in all)"
        return {**row, "result": "left", "why": why}
    try:
        result = invoke("tally_changes", {"Records": batch}) or {}
    except Exception as exc:  # the cause is not fixed yet: the record stays for the next run
        return {**row, "result": "left", "why": f"tally_changes failed again: {type(exc).__name__}: {exc}"}
    return {**row, "changes": len(batch), "result": "tallied", "items_written": result.get("items_written", 0)}
