"""Lambda's DynamoDB event source mappings for tally_changes, on the embedded stack (moto has no such mapping).

`ChangeStreams` reads each table's stream named by one of tally_changes' `DynamoDB` events in template.yaml, from
where its last read stopped, keeps the records the event's filter lets through, and invokes the function with
batches of at most the event's `BatchSize`. As Lambda does, a batch that failed is retried as the same batch before
anything after it, and filtered-out records are passed over; after the event's `MaximumRetryAttempts` it is given up:
Lambda's failure record (the shard and the batch's first and last sequence numbers) goes to `TallyFailureQueue`,
where `rappel retally` finds it, and the stream moves on. Its caller decides when to read: the simulator once
per batching window after work was done, `rappel local up` every 2 seconds, tests when they are about to read the
counters. One reader per stack: the positions are this object's. On moto in this process it reads moto's streams
backend directly and drops what it has passed (moto would keep every record of the run); on DynamoDB Local or
moto's server, through the DynamoDB Streams API.

`read_range` and `lambda_records` read a given-up batch again and shape it as the mapping did, for `rappel retally`
on any stack, AWS's included.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from rappel_local.stack import globals_environment, load_template

FUNCTION = "TallyChangesFunction"
# moto knows DynamoDB's account-based endpoints, not those of its streams: clients of both use the regional ones.
REGIONAL_ENDPOINTS = Config(account_id_endpoint_mode="disabled")
HANDLER = "tally_changes"


@dataclass(frozen=True)
class StreamSource:
    """One `DynamoDB` event of the function: the table (by the environment variable naming it) and its settings."""

    table_variable: str
    batch_size: int
    window: timedelta
    patterns: tuple[Mapping[str, Any], ...]
    max_retries: int = -1  # -1: until the records leave the stream, as Lambda's default


def stream_sources(template_path: str | Path | None = None) -> list[StreamSource]:
    """The function's stream event sources, as template.yaml declares them."""
    resources = load_template(template_path).get("Resources", {})
    variable_of = {
        value["Ref"]: name
        for name, value in globals_environment(template_path).items()
        if isinstance(value, dict) and set(value) == {"Ref"}
    }
    sources = []
    for event in resources[FUNCTION]["Properties"]["Events"].values():
        if event["Type"] != "DynamoDB":
            continue
        props = event["Properties"]
        table = props["Stream"]["Fn::GetAtt"][0]
        filters = props.get("FilterCriteria", {}).get("Filters", [])
        sources.append(
            StreamSource(
                table_variable=variable_of[table],
                batch_size=int(props.get("BatchSize", 100)),
                window=timedelta(seconds=int(props.get("MaximumBatchingWindowInSeconds", 0))),
                patterns=tuple(json.loads(f["Pattern"]) for f in filters),
                max_retries=int(props.get("MaximumRetryAttempts", -1)),
            )
        )
    return sources


@dataclass
class ChangeStreams:
    """The mappings' positions in the streams of one stack, and the batches still to retry."""

    sources: list[StreamSource] = field(default_factory=stream_sources)
    # Where the tables' names and the endpoint are read (a stack's `environment()`; by default this process's).
    environment: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _after: dict[tuple[str, str], str] = field(default_factory=dict)  # (stream, shard) -> last sequence number
    _retry: dict[tuple[str, str], tuple[list[dict[str, Any]], str | None]] = field(default_factory=dict)
    _failures: dict[tuple[str, str], int] = field(default_factory=dict)  # invocations of the batch in line
    _kept: set[tuple[str, str]] = field(default_factory=set)  # shards with a batch given up: moto keeps their records
    _clients: dict[str, Any] = field(default_factory=dict)
    _stream_arns: dict[str, str] = field(default_factory=dict)  # table -> its stream (read once)
    _shards: dict[str, list[str]] = field(default_factory=dict)  # stream -> its shards (`_shards_of`)

    @property
    def window(self) -> timedelta:
        """How long a mapping gathers records before it invokes the function (the longest of the sources)."""
        return max((source.window for source in self.sources), default=timedelta(0))

    def drain(self, invoke: Callable[[str, dict[str, Any]], Any]) -> int:
        """Deliver every record written so far, in batches; returns the records delivered. A batch whose invocation
        raised stays first in line for the next drain, and its stream waits behind it."""
        delivered = 0
        for source in self.sources:
            stream_arn = self._stream_of(self.environment[source.table_variable])
            for shard in self._shards_of(stream_arn):
                delivered += self._drain_shard((stream_arn, shard), source, invoke)
        return delivered

    def _stream_of(self, table: str) -> str:
        if table not in self._stream_arns:
            stream_arn = self._client("dynamodb").describe_table(TableName=table)["Table"].get("LatestStreamArn")
            if not stream_arn:
                raise ValueError(f"table {table} has no stream: create the stack from template.yaml")
            self._stream_arns[table] = stream_arn
        return self._stream_arns[table]

    def _shards_of(self, stream_arn: str) -> list[str]:
        # moto keeps one shard per stream, read once; another store's may roll over: read at each drain.
        if self._endpoint is not None or stream_arn not in self._shards:
            described = self._client("dynamodbstreams").describe_stream(StreamArn=stream_arn)
            self._shards[stream_arn] = [shard["ShardId"] for shard in described["StreamDescription"]["Shards"]]
        return self._shards[stream_arn]

    @property
    def _endpoint(self) -> str | None:
        # DynamoDB Local serves its streams on its own endpoint; none: moto in this process.
        return self.environment.get("AWS_ENDPOINT_URL_DYNAMODB") or self.environment.get("AWS_ENDPOINT_URL") or None

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto3.client(service, endpoint_url=self._endpoint, config=REGIONAL_ENDPOINTS)
        return self._clients[service]

    def _drain_shard(
        self, key: tuple[str, str], source: StreamSource, invoke: Callable[[str, dict[str, Any]], Any]
    ) -> int:
        delivered = 0
        while True:
            retried = self._retry.pop(key, None)
            batch, last, more = (*retried, True) if retried else self._read(key, source)
            if batch:
                try:
                    invoke(HANDLER, {"Records": batch})
                except Exception:
                    self._failures[key] = self._failures.get(key, 0) + 1
                    if not 0 <= source.max_retries <= self._failures[key] - 1:  # retries left
                        self._retry[key] = (batch, last)
                        return delivered
                    self._give_up(key, batch)
                else:
                    delivered += len(batch)
                self._failures.pop(key, None)
            if last is not None:
                self._after[key] = last  # past the batch and the records the filter kept out
                if self._endpoint is None and key not in self._kept:
                    _forget_in_moto(*key, last)
            if not more:
                return delivered

    def _give_up(self, key: tuple[str, str], batch: list[dict[str, Any]]) -> None:
        """What Lambda does with a batch past its retries: its failure record to the on-failure destination."""
        from core import clock

        stream_arn, shard = key
        record = {
            "requestContext": {
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": self._failures[key],
                "functionArn": f"local:function:{HANDLER}",
            },
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0",
            "timestamp": clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "DDBStreamBatchInfo": {
                "shardId": shard,
                "startSequenceNumber": batch[0]["dynamodb"]["SequenceNumber"],
                "endSequenceNumber": batch[-1]["dynamodb"]["SequenceNumber"],
                "approximateArrivalOfFirstRecord": _arrival(batch[0]),
                "approximateArrivalOfLastRecord": _arrival(batch[-1]),
                "batchSize": len(batch),
                "streamArn": stream_arn,
            },
        }
        destination = self.environment.get("TALLY_FAILURE_QUEUE_URL")
        if destination:  # none (a stack without queues): dropped, as Lambda drops it without a destination
            # The queue is SQS's, wherever the streams are served (DynamoDB Local serves only DynamoDB).
            sqs = boto3.client("sqs", endpoint_url=self.environment.get("AWS_ENDPOINT_URL") or None)
            sqs.send_message(QueueUrl=destination, MessageBody=json.dumps(record))
        self._kept.add(key)  # in this process, moto keeps the shard's records: the batch can be read again

    def _read(self, key: tuple[str, str], source: StreamSource) -> tuple[list[dict[str, Any]], str | None, bool]:
        """(the records the filter lets through, the sequence number of the last one read, whether more may follow)."""
        stream_arn, shard = key
        after = self._after.get(key)
        position: dict[str, Any] = {"ShardIteratorType": "TRIM_HORIZON"}
        if after is not None:
            position = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after}
        if self._endpoint is None:
            records = _read_in_moto(stream_arn, shard, position, source.batch_size)
            more = len(records) == source.batch_size  # moto answers up to the limit
        else:
            streams = self._client("dynamodbstreams")
            iterator = streams.get_shard_iterator(StreamArn=stream_arn, ShardId=shard, **position)["ShardIterator"]
            records = streams.get_records(ShardIterator=iterator, Limit=source.batch_size)["Records"]
            more = bool(records)  # a page ends at 1 MB: only an empty one says the shard is read to its end
        kept = lambda_records(records, stream_arn, source.patterns)
        last = records[-1]["dynamodb"]["SequenceNumber"] if records else None
        return kept, last, more


def _moto_streams(stream_arn: str) -> Any:
    from moto.dynamodbstreams.models import dynamodbstreams_backends

    _, _, _, region, account, _ = stream_arn.split(":", 5)
    return dynamodbstreams_backends[account][region]


def _read_in_moto(stream_arn: str, shard: str, position: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    """GetRecords answered by moto's streams backend in this process, as moto's own event source mappings read it:
    the same records as the API's, without serializing them to JSON and parsing them back (a third of a drain)."""
    backend = _moto_streams(stream_arn)
    sequence = position.get("SequenceNumber")
    # moto's responses hand it the number as an int (its annotation says str).
    number: Any = int(sequence) if sequence else None
    iterator = backend.get_shard_iterator(stream_arn, shard, position["ShardIteratorType"], number)
    page = iterator.get(limit)
    for used in (iterator.arn, page["NextShardIterator"]):  # moto keeps every iterator it hands out
        backend.shard_iterators.pop(used, None)
    records: list[dict[str, Any]] = page["Records"]
    return records


def _forget_in_moto(stream_arn: str, shard: str, through: str) -> None:
    """Drop the records the mapping has passed from moto's stream. moto keeps every record (both images of every
    change) for as long as the process runs; the mapping is the stream's one reader and never reads them again."""
    stream = _moto_streams(stream_arn)._get_table_from_arn(stream_arn).stream_shard
    if stream is None or stream.id != shard:
        return
    passed = int(through) - stream.starting_sequence_number + 1
    if passed > 0:
        del stream.items[:passed]
        stream.starting_sequence_number += passed


def _arrival(record: Mapping[str, Any]) -> str | None:
    created = record["dynamodb"].get("ApproximateCreationDateTime")
    if created is None:
        return None
    return datetime.fromtimestamp(float(created), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# GetRecords may answer empty pages before the data it points at; this many in a row end a read.
EMPTY_PAGES = 5


def streams_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A DynamoDB Streams client for AWS, DynamoDB Local or moto (its regional endpoint)."""
    return boto3.client("dynamodbstreams", region_name=region, endpoint_url=endpoint_url, config=REGIONAL_ENDPOINTS)


class BatchGone(Exception):
    """The stream no longer holds a batch's changes as its failure record describes them; the message says why."""


def read_range(streams: Any, stream_arn: str, shard: str, first: str, last: str) -> list[dict[str, Any]]:
    """The records of `shard` from sequence number `first` through `last` (a batch Lambda gave up on), read through
    the DynamoDB Streams API; raises BatchGone when the stream no longer holds all of them (it keeps 24 hours)."""
    found = streams.exceptions
    errors = (found.TrimmedDataAccessException, found.ResourceNotFoundException, found.ExpiredIteratorException)
    try:
        start = _shard_start(streams, stream_arn, shard)
        if start is None:
            raise BatchGone(f"shardId: the stream lists no shard {shard} any more (it keeps 24 hours)")
        if int(first) < int(start):
            raise BatchGone("the stream no longer holds the batch's first change (it keeps 24 hours)")
        iterator = streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER", SequenceNumber=first
        )["ShardIterator"]
        records: list[dict[str, Any]] = []
        empty = 0
        while iterator and empty < EMPTY_PAGES:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            empty = 0 if page["Records"] else empty + 1
            for record in page["Records"]:
                number = record["dynamodb"]["SequenceNumber"]
                if not records and number != first:
                    raise BatchGone("the stream no longer holds the batch's first change (it keeps 24 hours)")
                if int(number) > int(last):
                    return records
                records.append(record)
                if number == last:
                    return records
            iterator = page.get("NextShardIterator")
    except errors as exc:
        raise BatchGone(f"the stream no longer holds the batch ({type(exc).__name__})") from exc
    raise BatchGone(f"the shard ended before the batch's last change ({last})")


def _shard_start(streams: Any, stream_arn: str, shard: str) -> str | None:
    """The first sequence number the stream holds for `shard` (DescribeStream, every page), None if it lists none."""
    kwargs: dict[str, Any] = {"StreamArn": stream_arn}
    while True:
        described = streams.describe_stream(**kwargs)["StreamDescription"]
        for listed in described["Shards"]:
            if listed["ShardId"] == shard:
                return str(listed["SequenceNumberRange"]["StartingSequenceNumber"])
        if not described.get("LastEvaluatedShardId"):
            return None
        kwargs["ExclusiveStartShardId"] = described["LastEvaluatedShardId"]


def lambda_records(
    records: list[dict[str, Any]], stream_arn: str, patterns: tuple[Mapping[str, Any], ...]
) -> list[dict[str, Any]]:
    """The records Lambda would hand tally_changes: those the event's filter lets through, as Lambda shapes them."""
    return [_lambda_record(r, stream_arn) for r in records if _passes(r, patterns)]


def _lambda_record(record: dict[str, Any], stream_arn: str) -> dict[str, Any]:
    """A stream record as Lambda hands it to the function: with the stream's ARN, the time as epoch seconds."""
    change = dict(record["dynamodb"])
    created = change.get("ApproximateCreationDateTime")
    if created is not None and hasattr(created, "timestamp"):
        change["ApproximateCreationDateTime"] = created.timestamp()
    return {**record, "dynamodb": change, "eventSourceARN": stream_arn}


def _passes(record: Mapping[str, Any], patterns: tuple[Mapping[str, Any], ...]) -> bool:
    """Whether a record matches one of the filter patterns (no pattern: every record)."""
    return not patterns or any(_matches(record, pattern) for pattern in patterns)


def _matches(value: Any, pattern: Any) -> bool:
    """Lambda's event filtering for what the template uses: nested keys, a list of exact values or prefixes."""
    if isinstance(pattern, Mapping):
        return isinstance(value, Mapping) and all(
            name in value and _matches(value[name], part) for name, part in pattern.items()
        )
    return any(
        isinstance(value, str) and value.startswith(choice["prefix"])
        if isinstance(choice, Mapping)
        else value == choice
        for choice in pattern
    )
