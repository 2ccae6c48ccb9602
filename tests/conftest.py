"""Shared fixtures: a fake AWS account on moto built from template.yaml, and a virtual clock."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Rappel")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "rappel")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")

from core import clock
from core.settings import Settings, build_settings

START = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)


@dataclass
class FakeAws:
    """The embedded stack inside moto, with settings pointing at it."""

    settings: Settings
    environment: dict[str, str]
    clock: clock.VirtualClock
    change_streams: Any = None

    def with_settings(self, **overrides: object) -> Settings:
        """The same stack with some settings changed."""
        self.settings = build_settings(**{**self.environment, **overrides})
        return self.settings

    def tally(self) -> int:
        """Run tally_changes on every table change so far, as Lambda's stream mappings would (the counters lag the
        data until then); returns the changes delivered."""
        from rappel_local.embedded import invoke

        return self.change_streams.drain(invoke)


@pytest.fixture(scope="session", autouse=True)
def service_models_parsed_once() -> Iterator[None]:
    """Each test's moto account starts boto3 afresh, and each new botocore session parsed its service models from
    disk again: about half of the suite's time went there."""
    from rappel_local.embedded import shared_service_models

    with shared_service_models():
        yield


@pytest.fixture
def virtual_clock() -> Iterator[clock.VirtualClock]:
    """A virtual clock installed as core's clock for the test."""
    vc = clock.VirtualClock(START)
    previous = clock.install(vc)
    yield vc
    clock.install(previous)


@pytest.fixture
def aws(virtual_clock: clock.VirtualClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAws]:
    """moto with every table, queue and secret of template.yaml, and settings (and env) pointing at them.

    Under `moto_shortcuts`, as the simulator and `make run` are: the same answers (tests/unit/test_moto_shortcuts.py
    compares them with moto's own), a quarter less of the suite's time."""
    from moto import mock_aws

    from rappel_local.change_streams import ChangeStreams
    from rappel_local.embedded import reset_core_caches
    from rappel_local.moto_shortcuts import moto_shortcuts
    from rappel_local.stack import create_stack

    with mock_aws(), moto_shortcuts():
        stack = create_stack(
            prefix="test",
            endpoint_url=None,
            orange_credentials={"client_id": "rappel-test", "client_secret": "s3cret-test"},
            kannel_credentials={"username": "kannel", "password": "kannel-pass"},
        )
        environment = {**stack.environment(), "SMS_QUIET_HOURS_ENABLED": "true"}
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        reset_core_caches()
        yield FakeAws(build_settings(**environment), environment, virtual_clock, ChangeStreams())
        reset_core_caches()


@pytest.fixture
def clinic_events(aws: FakeAws) -> Callable[[], list[dict[str, Any]]]:
    """What a clinic system subscribed to the bus (source `rappel`) receives, in order, so far: a rule to a queue,
    read back."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    events = boto3.client("events", region_name="us-east-1")
    url = sqs.create_queue(QueueName="clinic-system")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="clinic-system", EventPattern=json.dumps({"source": ["rappel"]}), EventBusName="default")
    events.put_targets(Rule="clinic-system", EventBusName="default", Targets=[{"Id": "queue", "Arn": arn}])
    seen: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for message in batch:
                seen.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return seen

    return read


@pytest.fixture
def real_logs() -> Iterator[io.StringIO]:
    """What the functions' logger really writes, through its masking formatter: its handler's stream is bound at
    import time, so capsys never sees it (and caplog sees records before the formatter runs)."""
    from core.observability import logger

    handler = logger._logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield buffer
    handler.setStream(previous)
