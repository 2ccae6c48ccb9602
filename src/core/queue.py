"""The send queue and its dead letter queue (SQS): enqueue in batches, measure depth, dead-letter, redrive."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import boto3
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, Json, StrictInt, StringConstraints

from core.settings import Settings

BATCH = 10  # SendMessageBatch's limit
ENTRY_RETRIES = 3


@dataclass(frozen=True)
class QueuedMessage:
    """What travels on the queue: which message, and which claim of it (stale claims are dropped).

    `claimed_at` is the claim's own mark (the `queued_at` it writes): two records that name one version (a
    dispatcher that died between its enqueue and its claim, then the next run's record) are told apart by it, so
    only the claim's own record may send. None on a dead letter's DLQ copy, which the version alone names."""

    message_id: str
    version: int
    claimed_at: str | None = None

    def fields(self) -> dict[str, str | int]:
        """The body's fields."""
        out: dict[str, str | int] = {"message_id": self.message_id, "version": self.version}
        if self.claimed_at is not None:
            out["claimed_at"] = self.claimed_at
        return out

    def body(self) -> str:
        """The SQS message body."""
        return json.dumps(self.fields(), separators=(",", ":"))


@dataclass(frozen=True)
class QueuedSms:
    """One SQS record for several reminders to one phone, sent as one SMS (the dispatcher grouped them)."""

    reminders: tuple[QueuedMessage, ...]

    def body(self) -> str:
        """The SQS message body."""
        return json.dumps({"reminders": [r.fields() for r in self.reminders]}, separators=(",", ":"))


class ClaimBody(BaseModel):
    """A send queue body for one reminder: `{"message_id", "version", "claimed_at"}` (also the DLQ's copies, which
    carry no `claimed_at`, as the records of versions before it did not). A field this version does not know (a
    newer dispatcher's, read after a rollback or during a deploy) is left out, not refused: refused, its reminder
    would wait in the dead letter queue, out of the `due` index."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    message_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    version: StrictInt
    claimed_at: Annotated[str, StringConstraints(min_length=1, max_length=40)] | None = None

    @property
    def claim(self) -> QueuedMessage:
        return QueuedMessage(self.message_id, self.version, self.claimed_at)


class GroupedBody(BaseModel):
    """A send queue body for the reminders of one SMS: `{"reminders": [{"message_id", "version"}, ...]}` (unknown
    fields left out, as in `ClaimBody`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reminders: Annotated[list[ClaimBody], Field(min_length=1, max_length=100)]

    @property
    def claims(self) -> tuple[QueuedMessage, ...]:
        return tuple(r.claim for r in self.reminders)


class SendRecord(SqsRecordModel):
    """A send queue record as the batch processor parses it (Powertools' SQS record model, with our body)."""

    body: Json[ClaimBody | GroupedBody]

    @property
    def claims(self) -> tuple[QueuedMessage, ...]:
        """The reminders the record carries, each with the claim it was enqueued under."""
        body = self.body
        return body.claims if isinstance(body, GroupedBody) else (body.claim,)


def claims_of(record: QueuedMessage | QueuedSms) -> tuple[QueuedMessage, ...]:
    """The reminders one send queue record carries."""
    return record.reminders if isinstance(record, QueuedSms) else (record,)


@functools.cache
def _sqs(region: str, endpoint: str) -> Any:
    return boto3.client("sqs", region_name=region, endpoint_url=endpoint or None)


def _client(settings: Settings) -> Any:
    return _sqs(settings.AWS_REGION, settings.AWS_ENDPOINT_URL)


def reset_clients() -> None:
    """Drop cached clients (the embedded stack and tests start new endpoints)."""
    _sqs.cache_clear()


def enqueue(messages: Sequence[QueuedMessage | QueuedSms], settings: Settings) -> list[QueuedMessage | QueuedSms]:
    """Send `messages` to the send queue, 10 per call, retrying failed entries; returns those never accepted."""
    client = _client(settings)
    failed: list[QueuedMessage | QueuedSms] = []
    for start in range(0, len(messages), BATCH):
        todo = {str(i): m for i, m in enumerate(messages[start : start + BATCH])}
        for _ in range(ENTRY_RETRIES):
            if not todo:
                break
            entries = [{"Id": key, "MessageBody": m.body()} for key, m in todo.items()]
            response = client.send_message_batch(QueueUrl=settings.SEND_QUEUE_URL, Entries=entries)
            todo = {entry["Id"]: todo[entry["Id"]] for entry in response.get("Failed", [])}
        failed += todo.values()
    return failed


def depth(queue_url: str, settings: Settings) -> int:
    """Messages in a queue, visible, in flight and delayed (approximate, as SQS reports)."""
    attributes = _client(settings).get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def put_dead_letter(message: QueuedMessage, settings: Settings) -> None:
    """Put a message on the DLQ, so that one redrive brings back crashed and exhausted messages alike."""
    _client(settings).send_message(QueueUrl=settings.DEAD_LETTER_QUEUE_URL, MessageBody=message.body())


def _arn(queue_url: str, settings: Settings) -> str:
    attributes = _client(settings).get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


@dataclass(frozen=True)
class RedriveResult:
    """How a redrive went: SQS's own move task, or our receive/send/delete loop where that API is missing."""

    method: str
    moved: int | None
    task_handle: str | None = None


def redrive(settings: Settings, max_messages: int = 100_000) -> RedriveResult:
    """Move the DLQ back to the send queue: StartMessageMoveTask on AWS, a receive/send/delete loop elsewhere."""
    client = _client(settings)
    # An endpoint of our own is moto's (the embedded stack), which has no StartMessageMoveTask: its server would
    # answer 500 three times, each with a traceback in the stack's console, before the loop below.
    try:
        if not settings.AWS_ENDPOINT_URL:
            response = client.start_message_move_task(
                SourceArn=_arn(settings.DEAD_LETTER_QUEUE_URL, settings),
                DestinationArn=_arn(settings.SEND_QUEUE_URL, settings),
            )
            return RedriveResult("StartMessageMoveTask", None, response.get("TaskHandle"))
    except (NotImplementedError, ClientError) as exc:
        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") not in {
            "UnsupportedOperation",
            "InvalidAction",
            "NotImplemented",
            "500",
        }:
            raise
    moved = 0
    while moved < max_messages:
        received = client.receive_message(
            QueueUrl=settings.DEAD_LETTER_QUEUE_URL, MaxNumberOfMessages=BATCH, WaitTimeSeconds=0, VisibilityTimeout=60
        ).get("Messages", [])
        if not received:
            break
        for item in received:
            # Send first, delete second: a crash in between duplicates (absorbed downstream), never loses.
            client.send_message(QueueUrl=settings.SEND_QUEUE_URL, MessageBody=item["Body"])
            client.delete_message(QueueUrl=settings.DEAD_LETTER_QUEUE_URL, ReceiptHandle=item["ReceiptHandle"])
            moved += 1
    return RedriveResult("receive-send-delete", moved)
