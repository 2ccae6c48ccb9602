"""Lambda's DynamoDB event source mappings for tally_changes, on the embedded stack (moto has no such mapping).

`ChangeStreams` reads each table's stream named by one of tally_changes' `DynamoDB` events in template.yaml, from
where its last read stopped, keeps the records the event's filter lets through, and invokes the function with
batches of at most the event's `BatchSize`. As Lambda does, a batch that failed is retried as the same batch before
anything after it, and filtered-out records are passed over. Its caller decides when to read: the simulator once
per batching window after work was done, `rappel local up` every window, tests when they are about to read the
counters. One reader per stack: the positions are this object's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from rappel_local.stack import globals_environment, load_template

FUNCTION = "TallyChangesFunction"
HANDLER = "tally_changes"


@dataclass(frozen=True)
class StreamSource:
    """One `DynamoDB` event of the function: the table (by the environment variable naming it) and its settings."""

    table_variable: str
    batch_size: int
    window: timedelta
    patterns: tuple[Mapping[str, Any], ...]


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
    _retry: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    _clients: dict[str, Any] = field(default_factory=dict)

    @property
    def window(self) -> timedelta:
        """How long a mapping gathers records before it invokes the function (the longest of the sources)."""
        return max((source.window for source in self.sources), default=timedelta(0))

    def drain(self, invoke: Callable[[str, dict[str, Any]], Any]) -> int:
        """Deliver every record written so far, in batches; returns the records delivered. A batch whose invocation
        raised stays first in line for the next drain, and its stream waits behind it."""
        delivered = 0
        dynamodb, streams = self._client("dynamodb"), self._client("dynamodbstreams")
        for source in self.sources:
            table = self.environment[source.table_variable]
            stream_arn = dynamodb.describe_table(TableName=table)["Table"].get("LatestStreamArn")
            if not stream_arn:
                continue
            for shard in streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]:
                delivered += self._drain_shard(streams, stream_arn, shard["ShardId"], source, invoke)
        return delivered

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            # moto knows DynamoDB's account-based endpoints, not those of its streams.
            # DynamoDB Local serves its streams on its own endpoint.
            endpoint = self.environment.get("AWS_ENDPOINT_URL_DYNAMODB") or self.environment.get("AWS_ENDPOINT_URL")
            self._clients[service] = boto3.client(
                service,
                endpoint_url=endpoint or None,
                config=Config(account_id_endpoint_mode="disabled"),
            )
        return self._clients[service]

    def _drain_shard(
        self,
        streams: Any,
        stream_arn: str,
        shard: str,
        source: StreamSource,
        invoke: Callable[[str, dict[str, Any]], Any],
    ) -> int:
        key = (stream_arn, shard)
        delivered = 0
        while True:
            batch = self._retry.pop(key, None) or self._read(streams, key, source)
            if not batch:
                return delivered
            try:
                invoke(HANDLER, {"Records": batch})
            except Exception:
                self._retry[key] = batch
                return delivered
            self._after[key] = batch[-1]["dynamodb"]["SequenceNumber"]
            delivered += len(batch)

    def _read(self, streams: Any, key: tuple[str, str], source: StreamSource) -> list[dict[str, Any]]:
        """The next batch the filter lets through (records it keeps out are passed over for good)."""
        stream_arn, shard = key
        while True:
            after = self._after.get(key)
            position = {"ShardIteratorType": "TRIM_HORIZON"}
            if after is not None:
                position = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after}
            iterator = streams.get_shard_iterator(StreamArn=stream_arn, ShardId=shard, **position)["ShardIterator"]
            records = streams.get_records(ShardIterator=iterator, Limit=source.batch_size)["Records"]
            if not records:
                return []
            kept = [_lambda_record(r, stream_arn) for r in records if _passes(r, source.patterns)]
            if kept:
                return kept
            self._after[key] = records[-1]["dynamodb"]["SequenceNumber"]


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
